// The one routing rule of kernels/ops/: an op's tensors' device picks its implementation. CPU
// tensors run the fast CPU kernel (or the fp64 reference on request), CUDA tensors the CUDA
// kernel on torch's current stream, with its cudaError_t turned into an exception; any other
// device, or CUDA in a build without it, gets one error naming the op and the device. Before a
// CUDA launch, an error that an earlier kernel recorded on the device (bad block tables, lengths,
// slot mappings: kernels/common/device_error.h) is raised.
#pragma once

#include <torch/types.h>

#include <type_traits>

#include "common/error.h"

#ifdef TESSERA_WITH_CUDA
#include "kernels/common/device_error.h"
#endif
#ifdef TESSERA_TORCH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace tessera::kernels {

// An op's CUDA implementation in a build without CUDA (see TESSERA_CUDA_IMPL).
struct NoCudaImpl {};

// The CUDA implementation of an op: a callable (void* cuda_stream) -> int (a cudaError_t value,
// 0 on success). In a build without CUDA its text is not compiled at all.
#ifdef TESSERA_WITH_CUDA
#define TESSERA_CUDA_IMPL(...) (__VA_ARGS__)
#else
#define TESSERA_CUDA_IMPL(...) (::tessera::kernels::NoCudaImpl{})
#endif

namespace detail {

// The stream to launch on for a CUDA tensor (the default stream when torch lacks CUDA).
inline void* cuda_stream_of([[maybe_unused]] const torch::Device& device) {
#ifdef TESSERA_TORCH_CUDA
  return c10::cuda::getCurrentCUDAStream(device.index()).stream();
#else
  return nullptr;
#endif
}

inline int cuda_index_of(const torch::Device& device) {
  return device.has_index() ? device.index() : 0;
}

}  // namespace detail

// Raises an error a kernel recorded on this device (a no-op on the CPU): for callers that
// synchronise with the device anyway and want a bad table reported there.
inline void check_device_errors([[maybe_unused]] const torch::Device& device) {
#ifdef TESSERA_WITH_CUDA
  if (device.is_cuda()) check_device_errors(detail::cuda_index_of(device));
#endif
}

// Runs ref() or cpu() on CPU tensors (ref when `reference`), cuda(stream) on CUDA tensors.
template <typename Ref, typename Cpu, typename Cuda>
void route(const char* op, const torch::Device& device, bool reference, Ref&& ref, Cpu&& cpu,
           Cuda&& cuda) {
  if (device.is_cpu()) {
    if (reference) {
      ref();
    } else {
      cpu();
    }
    return;
  }
  TESSERA_CHECK(!reference, op, ": the reference implementation runs on CPU tensors only, got ",
                device);
  if (device.is_cuda()) {
#ifdef TESSERA_WITH_CUDA
    if constexpr (std::is_same_v<std::decay_t<Cuda>, NoCudaImpl>) {
      TESSERA_FAIL(op, ": got CUDA tensors but Tessera was built without CUDA");
    } else {
      check_device_errors(detail::cuda_index_of(device));
      const int rc = cuda(detail::cuda_stream_of(device));
      TESSERA_CHECK(rc == 0, op, ": CUDA kernel failed with ", cuda_error_text(rc));
    }
#else
    (void)cuda;  // TESSERA_CUDA_IMPL gave NoCudaImpl: its text was not compiled
    TESSERA_FAIL(op, ": got CUDA tensors but Tessera was built without CUDA");
#endif
    return;
  }
  TESSERA_FAIL(op, ": no implementation for device ", device);
}

}  // namespace tessera::kernels
