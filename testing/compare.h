// Tensor checks for multi-rank tests (tessera::testing): a tensor that must be the same on every
// rank, and results checked against a reference that rank 0 alone computes (typically the
// single-process computation a sharded one must reproduce). Every function here is collective:
// all ranks call it, in the same order. Each rank judges its own tensor, so only a rank whose
// tensor is wrong fails (and the harness then fails the test on every rank).
#pragma once

#include <gtest/gtest.h>
#include <torch/types.h>

#include "testing/harness.h"

namespace tessera::testing {

// |actual - expected| <= atol + rtol * |expected| element-wise; both zero means equal values.
// NaN matches NaN, and an infinity matches the same infinity.
struct Tolerance {
  double atol = 0;
  double rtol = 0;
};

// This rank's device: cuda:<device> when the harness uses NCCL (every rank has a GPU of its own),
// else the CPU.
torch::Device device();

// Rank 0's `tensor` on every rank (other ranks' argument is ignored and may be undefined): shape
// and dtype travel first, then the values over comm() (on device()).
torch::Tensor broadcast_from_rank0(const torch::Tensor& tensor);

// `tensor` has rank 0's shape and values (within `tol`) on this rank.
::testing::AssertionResult same_on_all_ranks(const torch::Tensor& tensor, Tolerance tol = {});

// `actual` on this rank matches `reference`, computed on rank 0 only (ignored elsewhere).
// dtypes may differ (an fp64 reference for an fp32 result): values are compared in fp64.
::testing::AssertionResult matches_rank0(const torch::Tensor& actual,
                                         const torch::Tensor& reference, Tolerance tol = {});

// `shard` is this rank's part of rank 0's `reference` cut into size() parts along `dim`
// (torch::tensor_split: the first n % size parts have one more row), as sharded results are.
::testing::AssertionResult matches_rank0_shard(const torch::Tensor& shard,
                                               const torch::Tensor& reference, int64_t dim,
                                               Tolerance tol = {});

// Rank-local comparison (no communication), the check the functions above make on each rank;
// `what` names the expected side in the message ("rank 0's reference").
::testing::AssertionResult tensors_match(const torch::Tensor& actual, const torch::Tensor& expected,
                                         Tolerance tol, const std::string& what);

}  // namespace tessera::testing
