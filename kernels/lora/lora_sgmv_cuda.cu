// CUDA segmented LoRA: a shrink kernel (one block per row; each warp takes ranks in turn and
// reduces its dot product over in_features) into an fp32 workspace, then an expand kernel (one
// thread per output element). Each row finds its segment by binary search over seg_indptr.
#include <cuda_runtime.h>

#include "kernels/common/device_error.cuh"
#include "kernels/lora/lora_sgmv.h"
#include "kernels/quant/kv_format.h"

namespace tessera::kernels {

namespace {

constexpr int kShrinkThreads = 128;
constexpr int kExpandThreads = 256;

__device__ __forceinline__ float load_elem(DType t, const void* p, int64_t i) {
  if (t == DType::kF16) return kv_half_to_float(static_cast<const uint16_t*>(p)[i]);
  if (t == DType::kBF16) return kv_bf16_to_float(static_cast<const uint16_t*>(p)[i]);
  return static_cast<const float*>(p)[i];
}

__device__ __forceinline__ void store_elem(DType t, void* p, int64_t i, float v) {
  if (t == DType::kF16) {
    static_cast<uint16_t*>(p)[i] = kv_float_to_half(v);
  } else if (t == DType::kBF16) {
    static_cast<uint16_t*>(p)[i] = kv_float_to_bf16(v);
  } else {
    static_cast<float*>(p)[i] = v;
  }
}

// The adapter of row `row` (-1 when its segment has none, or the metadata is out of range). The
// last segment starting at or before the row is the non-empty one that holds it.
__device__ int adapter_of_row(const LoraSgmvView& v, int64_t row) {
  int64_t lo = 0, hi = v.num_segments;  // find the last s with seg_indptr[s] <= row
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (v.seg_indptr[mid] <= row) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  if (v.num_segments == 0 || row >= v.seg_indptr[lo + 1]) return -1;
  const int a = v.seg_adapter[lo];
  return (a >= 0 && a < v.num_adapters) ? a : -1;
}

// One block: the checks of lora_sgmv_check() over the metadata, on the device.
__global__ void check_kernel(LoraSgmvView v) {
  if (threadIdx.x == 0) {
    if (v.seg_indptr[0] != 0) {
      report_device_error(v.error, MetadataCheck::kSegIndptrFirst, 0, 0, v.seg_indptr[0], 0);
    }
    if (v.seg_indptr[v.num_segments] != v.num_rows) {
      report_device_error(v.error, MetadataCheck::kSegIndptrLast, v.num_segments, 0,
                          v.seg_indptr[v.num_segments], v.num_rows);
    }
  }
  for (int64_t s = threadIdx.x; s < v.num_segments; s += blockDim.x) {
    if (v.seg_indptr[s + 1] < v.seg_indptr[s]) {
      report_device_error(v.error, MetadataCheck::kSegIndptrDecreasing, s, 0, v.seg_indptr[s],
                          v.seg_indptr[s + 1]);
    }
    const int32_t a = v.seg_adapter[s];
    if (a < -1 || a >= v.num_adapters) {
      report_device_error(v.error, MetadataCheck::kSegAdapterOutOfRange, s, 0, a, v.num_adapters);
    }
  }
  for (int64_t a = threadIdx.x; a < v.num_adapters; a += blockDim.x) {
    if (v.ranks[a] < 0 || v.ranks[a] > v.r_max) {
      report_device_error(v.error, MetadataCheck::kRankOutOfRange, a, 0, v.ranks[a], v.r_max);
    }
    if (!isfinite(v.scales[a])) {
      report_device_error(v.error, MetadataCheck::kScaleNotFinite, a, 0,
                          static_cast<int64_t>(__float_as_uint(v.scales[a])), 0);
    }
  }
}

__global__ void shrink_kernel(LoraSgmvView v, float* t) {
  const int64_t row = blockIdx.x;
  const int a = adapter_of_row(v, row);
  if (a < 0) return;
  const int rank = min(static_cast<int64_t>(v.ranks[a]), v.r_max);
  const float scale = v.scales[a];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int k = warp; k < rank; k += kShrinkThreads / 32) {
    const int64_t a_row = (static_cast<int64_t>(a) * v.r_max + k) * v.in_features;
    float sum = 0.0f;
    for (int64_t j = lane; j < v.in_features; j += 32) {
      sum += load_elem(v.dtype, v.x, row * v.x_row_stride + j) * load_elem(v.dtype, v.a, a_row + j);
    }
    for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (lane == 0) t[row * v.r_max + k] = scale * sum;
  }
}

__global__ void expand_kernel(LoraSgmvView v, const float* t) {
  const int64_t row = blockIdx.x;
  const int64_t o = static_cast<int64_t>(blockIdx.y) * kExpandThreads + threadIdx.x;
  if (o >= v.out_features) return;
  const int a = adapter_of_row(v, row);
  if (a < 0) return;
  const int rank = min(static_cast<int64_t>(v.ranks[a]), v.r_max);
  const int64_t b_row = (static_cast<int64_t>(a) * v.out_features + o) * v.r_max;
  float sum = 0.0f;
  for (int k = 0; k < rank; ++k) sum += t[row * v.r_max + k] * load_elem(v.dtype, v.b, b_row + k);
  const int64_t yi = row * v.y_row_stride + o;
  store_elem(v.dtype, v.y, yi, load_elem(v.dtype, v.y, yi) + sum);
}

}  // namespace

int lora_sgmv_cuda(const LoraSgmvView& v, float* workspace, void* cuda_stream) {
  auto stream = static_cast<cudaStream_t>(cuda_stream);
  if (v.error.record != nullptr) {
    check_kernel<<<1, 256, 0, stream>>>(v);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  if (v.num_rows == 0 || v.num_segments == 0 || v.num_adapters == 0 || v.r_max == 0) return 0;
  shrink_kernel<<<static_cast<unsigned>(v.num_rows), kShrinkThreads, 0, stream>>>(v, workspace);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return static_cast<int>(err);
  // Rows on x (up to 2^31 - 1 blocks), output blocks on y (65535 x 256 columns).
  const dim3 grid(static_cast<unsigned>(v.num_rows),
                  static_cast<unsigned>((v.out_features + kExpandThreads - 1) / kExpandThreads));
  expand_kernel<<<grid, kExpandThreads, 0, stream>>>(v, workspace);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace tessera::kernels
