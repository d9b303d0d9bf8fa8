// Weight-only int8 linear layers: weights quantised per output channel (symmetric, one float32
// scale per row of W), activations and outputs in float32. y = x (W_q * s)^T + bias is computed
// from the int8 weights directly, widening small tiles in registers or cache, never a float32
// copy of W: a quarter of the weight memory and of the bytes a decode step streams.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace tessera::kernels {

// Per-channel absmax quantisation of a weight matrix: scale[n] = max_k |w[n, k]| / 127 (1 for an
// all-zero row), q = clamp(round_half_even(w / scale), -127, 127), so |w - q * scale| <= scale / 2.
struct Int8QuantiseView {
  const void* w = nullptr;  // [n, k] contiguous, float32 / float16 / bfloat16
  int8_t* q = nullptr;      // [n, k] contiguous
  float* scale = nullptr;   // [n]
  int64_t n = 0;
  int64_t k = 0;
  DType dtype = DType::kF32;
};

struct Int8LinearView {
  const float* x = nullptr;      // [m, k], row stride x_row_stride, k contiguous
  const int8_t* w = nullptr;     // [n, k] contiguous (nn.Linear's [out_features, in_features])
  const float* scale = nullptr;  // [n]
  const float* bias = nullptr;   // [n], may be null
  float* y = nullptr;            // [m, n], row stride y_row_stride, n contiguous
  int64_t x_row_stride = 0;
  int64_t y_row_stride = 0;
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;
};

// Throws naming the field and value when sizes or strides are invalid.
void int8_linear_check(const Int8LinearView& view);

// References: plain loops; the linear accumulates sum_k x * q in fp64, then scales.
void int8_quantise_ref(const Int8QuantiseView& view);
void int8_linear_ref(const Int8LinearView& view);

// Fast CPU (OpenMP over blocks of 16 output channels x 64 rows; one copy of the kernels each for
// AVX-512, AVX2 and plain x86-64, chosen at run time): dot products along k of four rows of x
// with four int8 rows of W widened to float32 in registers, 16 lanes at a time.
void int8_quantise_cpu(const Int8QuantiseView& view);
void int8_linear_cpu(const Int8LinearView& view);

#ifdef TESSERA_WITH_CUDA
// CUDA: the quantiser one warp per row; the linear one warp per output element, int8 loads four
// at a time, warp-reduced. Return a cudaError_t value (0 on success).
int int8_quantise_cuda(const Int8QuantiseView& view, void* cuda_stream);
int int8_linear_cuda(const Int8LinearView& view, void* cuda_stream);
#endif

}  // namespace tessera::kernels
