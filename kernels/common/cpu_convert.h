// Widening float16 / bfloat16 rows to float32 and narrowing them back on the CPU, vectorised with
// F16C / AVX-512 where the running CPU has them (chosen at run time), for kernels that compute in
// float32 over half-precision operands. Rounding is to nearest even, as kernels/quant/kv_format.h.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace tessera::kernels {

// dst[i] = float(src[i]) for i < n; src holds `dtype` elements (float32, float16 or bfloat16).
void widen_to_f32(DType dtype, const void* src, float* dst, int64_t n);
// dst[i] = dtype(src[i]) for i < n, round to nearest even.
void narrow_from_f32(DType dtype, const float* src, void* dst, int64_t n);

}  // namespace tessera::kernels
