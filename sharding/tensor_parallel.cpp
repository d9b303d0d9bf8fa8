#include "sharding/tensor_parallel.h"

#include "common/error.h"

namespace tessera::sharding {

ShardRange even_shard(int64_t total, int rank, int world, const std::string& what) {
  TESSERA_CHECK(world >= 1, "world size must be positive, got ", world);
  TESSERA_CHECK(rank >= 0 && rank < world, "rank=", rank, " is outside [0, ", world, ")");
  TESSERA_CHECK(total % world == 0, what, "=", total, " is not divisible by ", world,
                " tensor-parallel ranks");
  const int64_t per = total / world;
  return {per * rank, per};
}

torch::Tensor column_parallel_linear(const torch::Tensor& x, const torch::Tensor& weight_shard,
                                     const torch::Tensor& bias_shard) {
  return torch::linear(x, weight_shard, bias_shard);
}

torch::Tensor row_parallel_linear(const torch::Tensor& x_shard, const torch::Tensor& weight_shard,
                                  Communicator* comm, const torch::Tensor& bias) {
  torch::Tensor y = torch::linear(x_shard, weight_shard);
  if (comm != nullptr && comm->size() > 1) comm->all_reduce(y, ReduceOp::kSum);
  if (bias.defined()) y.add_(bias);
  return y;
}

}  // namespace tessera::sharding
