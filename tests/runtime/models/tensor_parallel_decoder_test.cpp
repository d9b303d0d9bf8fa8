// Tensor parallelism end to end inside one job: every rank runs the decoder split over the world
// (its heads and MLP slice, all-reduced) and also the whole model alone, and the logits agree.
#include <gtest/gtest.h>
#include <torch/types.h>

#include <filesystem>

#include "runtime/models/decoder_model.h"
#include "runtime/models/tiny_model.h"
#include "sharding/mpi/mpi_communicator.h"
#include "sharding/mpi/mpi_env.h"
#include "tests/runtime/models/contiguous_attention.h"

namespace tessera {
namespace {

TEST(TensorParallelDecoder, ShardedLogitsEqualSingleRank) {
  torch::NoGradGuard g;
  sharding::MpiCommunicator comm;
  const auto dir = (std::filesystem::temp_directory_path() / "tessera_tp_test_tiny").string();
  if (comm.rank() == 0) models::ensure_tiny_model(dir);
  comm.barrier();
  models::WeightLoader w(models::ModelFolder::open(dir));
  const auto config = models::ModelConfig::from_file(dir + "/config.json");
  models::DecoderModel sharded(config, w, &comm, 64);
  models::DecoderModel whole(config, w, nullptr, 64);
  EXPECT_EQ(sharded.local_q_heads() * comm.size(), config.num_attention_heads);

  const int64_t n = 40;  // longer than the sliding window (16)
  auto tokens = torch::arange(n, torch::kLong) * 31 % 256;
  auto pos = torch::arange(n, torch::kLong);
  models::testing::ContiguousAttention c1(sharded, n + 1, n), c2(whole, n + 1, n);
  auto a = c1.forward(sharded, tokens, pos);
  auto b = c2.forward(whole, tokens, pos);
  EXPECT_TRUE(torch::allclose(a, b, 1e-4, 1e-4)) << (a - b).abs().max().item<float>();
  // Then one decode step through the caches.
  auto t1 = torch::full({1}, 65, torch::kLong), p1 = torch::full({1}, n, torch::kLong);
  auto a1 = c1.forward(sharded, t1, p1), b1 = c2.forward(whole, t1, p1);
  EXPECT_TRUE(torch::allclose(a1, b1, 1e-4, 1e-4));
  // Each rank's cache holds only its kv heads.
  EXPECT_EQ(c1.cache().layer(0).k.size(2) * comm.size(), config.num_key_value_heads);
}

}  // namespace
}  // namespace tessera
