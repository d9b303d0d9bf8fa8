// Quantisation of KV rows to int8 or fp8 e4m3 with one float32 scale per row (a row is the
// head_dim values of one (token, kv_head)), and the way back. The KV append kernels use the same
// per-row rule (kv_format.h) when they write quantised pages; these standalone kernels serve
// tests, offline conversion and the torch op library.
#pragma once

#include <cstdint>

#include "kernels/quant/kv_format.h"

namespace tessera::kernels {

struct KvQuantView {
  const float* x = nullptr;  // [rows, head_dim], row stride x_row_stride, head_dim contiguous
  void* q = nullptr;         // [rows, head_dim] contiguous, int8 or uint8 (fp8 e4m3 bits)
  float* scale = nullptr;    // [rows]
  int64_t x_row_stride = 0;
  int64_t rows = 0;
  int head_dim = 0;
  KvDType dtype = KvDType::kI8;  // kI8 or kF8E4M3
};

struct KvDequantView {
  const void* q = nullptr;       // [rows, head_dim] contiguous, int8 or uint8 (fp8 e4m3 bits)
  const float* scale = nullptr;  // [rows]
  float* x = nullptr;            // [rows, head_dim] contiguous
  int64_t rows = 0;
  int head_dim = 0;
  KvDType dtype = KvDType::kI8;
};

// Reference: plain loops; fp8 encoding by nearest-value search over the e4m3 code table (an
// independent check of the bit-twiddling encoder in kv_format.h).
void kv_quantise_ref(const KvQuantView& view);
void kv_dequantise_ref(const KvDequantView& view);
// e4m3 by exhaustive search: nearest finite value, ties to the even code, saturating at 448.
uint8_t float_to_e4m3_ref(float f);

// Fast CPU: rows in parallel (OpenMP), vectorisable inner loops. Bitwise equal to the reference.
void kv_quantise_cpu(const KvQuantView& view);
void kv_dequantise_cpu(const KvDequantView& view);

#ifdef TESSERA_WITH_CUDA
// CUDA: one warp per row. Return a cudaError_t value (0 on success).
int kv_quantise_cuda(const KvQuantView& view, void* cuda_stream);
int kv_dequantise_cuda(const KvDequantView& view, void* cuda_stream);
#endif

}  // namespace tessera::kernels
