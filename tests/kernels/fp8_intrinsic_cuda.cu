// Test helper: encodes floats to fp8 e4m3 on the GPU twice, with CUDA's own conversion
// (__nv_cvt_float_to_fp8, saturating, round to nearest even) and with Tessera's float_to_e4m3,
// so the two can be compared bit for bit.
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/quant/kv_format.h"

namespace {

__global__ void encode_kernel(const float* x, uint8_t* cuda_codes, uint8_t* our_codes, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  cuda_codes[i] = static_cast<uint8_t>(__nv_cvt_float_to_fp8(x[i], __NV_SATFINITE, __NV_E4M3));
  our_codes[i] = tessera::kernels::float_to_e4m3(x[i]);
}

}  // namespace

// x, cuda_codes, our_codes: device pointers to n elements. Returns a cudaError_t value.
int encode_e4m3_both_cuda(const float* x, uint8_t* cuda_codes, uint8_t* our_codes, int n) {
  if (n == 0) return 0;
  encode_kernel<<<(n + 255) / 256, 256>>>(x, cuda_codes, our_codes, n);
  // A launch that never started reports here, not from the synchronise below.
  if (const cudaError_t rc = cudaGetLastError(); rc != cudaSuccess) return static_cast<int>(rc);
  return static_cast<int>(cudaDeviceSynchronize());
}
