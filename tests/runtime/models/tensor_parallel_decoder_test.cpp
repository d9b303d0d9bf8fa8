// Tensor parallelism end to end inside one job, against the independent PyTorch implementation.
#include <gtest/gtest.h>
#include <torch/types.h>

#include <filesystem>

#include "runtime/models/decoder_model.h"
#include "runtime/models/tiny_model.h"
#include "sharding/mpi/mpi_communicator.h"
#include "sharding/mpi/mpi_env.h"
#include "tests/runtime/models/contiguous_attention.h"
#include "tests/runtime/models/reference_logits.h"

namespace tessera {
namespace {

// Every rank runs the decoder split over the world (its heads and MLP slice, all-reduced); the
// logits must equal the independent PyTorch implementation's (so the one-rank run is a real test,
// not the model against itself), and those of the whole model run alone on each rank.
TEST(TensorParallelDecoder, ShardedLogitsMatchTheReference) {
  if (const auto why = models::testing::reference_unavailable(); !why.empty()) GTEST_SKIP() << why;
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
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < n; ++i) ids.push_back(i * 31 % 256);
  ids.push_back(65);  // the decode step below
  // Rank 0 asks the reference; every rank gets its logits.
  auto want = torch::empty({n + 1, config.vocab_size});
  if (comm.rank() == 0) want = models::testing::reference_logits(dir, ids, config.vocab_size);
  comm.broadcast(want, 0);
  auto tokens = torch::tensor(std::vector<int64_t>(ids.begin(), ids.begin() + n), torch::kLong);
  auto pos = torch::arange(n, torch::kLong);
  models::testing::ContiguousAttention c1(sharded, n + 1, n), c2(whole, n + 1, n);
  auto a = c1.forward(sharded, tokens, pos);
  auto b = c2.forward(whole, tokens, pos);
  const auto prefix = want.narrow(0, 0, n);
  EXPECT_TRUE(torch::allclose(a, prefix, 1e-4, 1e-4)) << (a - prefix).abs().max().item<float>();
  EXPECT_TRUE(torch::allclose(a, b, 1e-4, 1e-4)) << (a - b).abs().max().item<float>();
  // Then one decode step through the caches.
  auto t1 = torch::full({1}, 65, torch::kLong), p1 = torch::full({1}, n, torch::kLong);
  auto a1 = c1.forward(sharded, t1, p1);
  const auto last = want.narrow(0, n, 1);
  EXPECT_TRUE(torch::allclose(a1, last, 1e-4, 1e-4)) << (a1 - last).abs().max().item<float>();
  // Each rank's cache holds only its kv heads.
  EXPECT_EQ(c1.cache().layer(0).k.size(2) * comm.size(), config.num_key_value_heads);
}

}  // namespace
}  // namespace tessera
