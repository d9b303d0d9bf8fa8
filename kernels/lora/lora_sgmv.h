// Segmented LoRA matmul (Punica's SGMV, S-LoRA's mixed ranks): the rows of a batch are grouped into
// segments that share an adapter, and each segment adds its adapter's low-rank update to the base
// layer's output, y += scale * (x A^T) B^T, as a shrink to rank r then an expand to out_features.
// Adapters sit stacked in padded tensors; each has its own rank (<= r_max) and scale, and the
// padding beyond an adapter's rank is never read. Many adapters serve one batch without merging.
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "kernels/common/device_error.h"

namespace tessera::kernels {

struct LoraSgmvView {
  // x, y, a and b share one element type: float32, float16, bfloat16, or float64 (CPU only).
  const void* x = nullptr;  // [num_rows, in_features], row stride x_row_stride, in contiguous
  void* y = nullptr;        // [num_rows, out_features], row stride y_row_stride; updated in place
  const void* a = nullptr;  // [num_adapters, r_max, in_features] contiguous (PEFT lora_A rows)
  const void* b = nullptr;  // [num_adapters, out_features, r_max] contiguous (PEFT lora_B)
  // [num_segments + 1]: segment s holds rows [seg_indptr[s], seg_indptr[s + 1]); 0 = first row,
  // non-decreasing, last = num_rows. Empty segments are allowed.
  const int32_t* seg_indptr = nullptr;
  const int32_t* seg_adapter = nullptr;  // [num_segments]: adapter index, or -1 = base model only
  const int32_t* ranks = nullptr;        // [num_adapters]: rank of each adapter, 0..r_max
  const float* scales = nullptr;         // [num_adapters]: lora_alpha / r (or / sqrt(r), rsLoRA)
  int64_t x_row_stride = 0;
  int64_t y_row_stride = 0;
  int64_t num_rows = 0;
  int64_t in_features = 0;
  int64_t out_features = 0;
  int64_t num_segments = 0;
  int64_t num_adapters = 0;
  int64_t r_max = 0;
  DType dtype = DType::kF32;
  // CUDA: where a check kernel, run before the products, records the first bad metadata entry
  // (the message lora_sgmv_check() raises on the CPU), raised at the next op on the device. The
  // products themselves never read outside the tensors whatever the metadata says.
  DeviceErrorSlot error;
};

// Throws tessera::Error naming the field and value when the view's sizes or its metadata (indptr,
// adapter indices, ranks, scales) are invalid. Reads the metadata: host pointers only.
void lora_sgmv_check(const LoraSgmvView& view);

// CPU reference: plain loops, fp64 accumulation of both products; y rounded once to its dtype.
void lora_sgmv_ref(const LoraSgmvView& view);
// Fast CPU: rows grouped by adapter across segments (each adapter's A and B read once per tile of
// its rows); the shrink in 8-row tiles over chunks of in_features, scaled into an fp32
// [num_rows, r_max] buffer; the expand over 64-column blocks (each thread owns its columns of
// every row), through a transposed B panel for adapters with many rows and dot products along
// the rank for the others; 16-wide vectors, cloned for AVX2 / AVX-512; float16 / bfloat16
// operands widened to float32 once per tile. float64: plain loops in float64, rows in parallel
// (the decoder's float64 validation mode).
void lora_sgmv_cpu(const LoraSgmvView& view);
#ifdef TESSERA_WITH_CUDA
// CUDA: a shrink kernel (one block per (row, adapter rank slice), fp32 into a [num_rows, r_max]
// workspace) then an expand kernel (one thread per output element); no float64. `workspace` holds
// num_rows * r_max floats on the device. Returns a cudaError_t value (0 on success).
int lora_sgmv_cuda(const LoraSgmvView& view, float* workspace, void* cuda_stream);
#endif

}  // namespace tessera::kernels
