// Fused CPU row operations of the decoder layer, one pass over memory each instead of the chain of
// libtorch ops (and temporaries) they replace. float32, contiguous rows; threaded with OpenMP over
// rows when a call is large enough to pay for it.
#pragma once

#include <cstdint>

namespace tessera::kernels {

// out[r] = (x[r] * 1/sqrt(mean(x[r]^2) + eps)) * w, for rows of n floats (transformers' RMSNorm in
// float32: the same operations in the same order, the mean accumulated in 16 lanes).
void rms_norm_cpu(const float* x, const float* w, float* out, int64_t rows, int64_t n, float eps);

// out[r, j] = silu(in[r, j]) * in[r, n + j] for rows of 2n floats (the fused gate/up projection:
// gate in the first half, up in the second); out has rows of n floats.
void silu_mul_cpu(const float* in, float* out, int64_t rows, int64_t n);

}  // namespace tessera::kernels
