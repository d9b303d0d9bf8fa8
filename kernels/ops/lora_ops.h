// Torch-facing segmented LoRA matmul (see kernels/lora/lora_sgmv.h).
#pragma once

#include <torch/types.h>

namespace tessera::kernels {

// Stacked adapters of one layer: a [num_adapters, r_max, in_features], b [num_adapters,
// out_features, r_max] (x's dtype, contiguous), ranks int32 [num_adapters], scales float32
// [num_adapters]. Rows of a beyond an adapter's rank, and columns of b, are never read.
struct LoraStack {
  torch::Tensor a, b, ranks, scales;
};

// y [num_rows, out_features] += scale_s * (x_s A_s^T) B_s^T for each segment s of the rows, in
// place. x [num_rows, in_features] and y share a dtype (float32, float16, bfloat16) and device;
// each has its last dimension contiguous. seg_indptr int32 [num_segments + 1] (0, non-decreasing,
// num_rows), seg_adapter int32 [num_segments] (adapter index or -1 = none). On CPU every index is
// checked before a kernel reads it; on CUDA a check kernel records the first bad one without a
// sync (kernels/common/device_error.h) and the same message is raised at the next op on the
// device, while the products skip rows whose adapter index is out of range.
void lora_sgmv_(torch::Tensor& y, const torch::Tensor& x, const LoraStack& adapters,
                const torch::Tensor& seg_indptr, const torch::Tensor& seg_adapter,
                bool reference = false);

}  // namespace tessera::kernels
