// C = A B (+ bias) for float32 row-major matrices with few rows (decode batches), reading B in
// place: no packing of B per call, which BLAS does and which costs it a full extra pass over B
// (the weights) at every decode step. Columns are split among the OpenMP threads.
#pragma once

#include <cstdint>

namespace tessera::kernels {

// A [M, K] (row stride lda), B [K, N] (row stride ldb), bias [N] or null, C [M, N] (row stride
// ldc); C is overwritten. Each C element is one sum over k in increasing order, so a row's result
// does not depend on the other rows in the batch.
void small_m_gemm_cpu(const float* a, int64_t lda, const float* b, int64_t ldb, const float* bias,
                      float* c, int64_t ldc, int64_t m, int64_t n, int64_t k);

}  // namespace tessera::kernels
