// Multi-rank training equivalence (run under mpirun with 1, 2 and 4 ranks): the parameters after
// 20 steps of `train` on the world (data parallel, ZeRO-1, tensor parallel, accumulation) equal
// those of a single-process run of the same global batch on MPI_COMM_SELF, within 1e-5. Also:
// gradient buckets launched during backward, a stop request (the preemption seam) that
// checkpoints and resumes bitwise, and bad configs ending every rank with one agreed error.
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "runtime/training/checkpoint.h"
#include "runtime/training/data_parallel.h"
#include "runtime/training/digits_model.h"
#include "runtime/training/train_task.h"
#include "runtime/training/trainer.h"
#include "sharding/mpi/mpi_communicator.h"

namespace tessera::training {
namespace {

namespace fs = std::filesystem;

sharding::MpiCommunicator& world() {
  static sharding::MpiCommunicator w(MPI_COMM_WORLD, "world");
  return w;
}

// A folder shared by all ranks (rank 0 makes it, broadcasts the name).
std::string shared_tmp(const std::string& tag) {
  char buf[256] = {0};
  if (world().rank() == 0) {
    std::string t = (fs::temp_directory_path() / ("tessera-train-" + tag + "-XXXXXX")).string();
    std::vector<char> s(t.begin(), t.end());
    s.push_back('\0');
    TESSERA_CHECK(mkdtemp(s.data()) != nullptr, "mkdtemp failed");
    std::snprintf(buf, sizeof(buf), "%s", s.data());
  }
  MPI_Bcast(buf, sizeof(buf), MPI_CHAR, 0, MPI_COMM_WORLD);
  return buf;
}

TrainConfig small_config() {
  TrainConfig c;
  c.model = "digits";
  c.dim = 16;
  c.depth = 1;
  c.heads = 4;
  c.mlp_ratio = 2;
  c.steps = 20;
  c.lr = 2e-3;
  c.warmup_steps = 3;
  c.min_lr = 1e-4;
  c.weight_decay = 0.01;
  c.seed = 7;
  c.progress = "off";
  c.bucket_mb = 0.002;  // a few KiB: several buckets even for this small model
  return c;
}

// Trains `dist` on the world and `ref` on this rank alone (MPI_COMM_SELF); returns the largest
// absolute parameter difference (the same on every rank).
double max_param_diff(const TrainConfig& dist, const TrainConfig& ref, const std::string& tag) {
  const std::string dir = shared_tmp(tag);
  TrainConfig d = dist, r = ref;
  d.checkpoint_dir = dir + "/dist";
  r.checkpoint_dir = dir + "/ref-" + std::to_string(world().rank());
  train(d, world());
  sharding::MpiCommunicator self(MPI_COMM_SELF, "self");
  train(r, self);
  double diff = 0;
  auto a = read_tensors(*latest_checkpoint(d.checkpoint_dir) + "/model.safetensors");
  auto b = read_tensors(*latest_checkpoint(r.checkpoint_dir) + "/model.safetensors");
  EXPECT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    diff = std::max(diff, (t - b.at(name)).abs().max().item<double>());
  }
  // The run moved the parameters (a test of equality between two untouched models proves nothing).
  torch::manual_seed(ref.seed);
  auto init = make_task(ref, nullptr)->params().gather_full();
  double moved = 0;
  for (const auto& [name, t] : init) {
    moved = std::max(moved, (a.at(name) - t).abs().max().item<double>());
  }
  EXPECT_GT(moved, 1e-3) << tag;
  MPI_Barrier(MPI_COMM_WORLD);
  if (world().rank() == 0) fs::remove_all(dir);
  std::printf("[rank %d] %s: max |param diff| = %.3g (moved %.3g)\n", world().rank(), tag.c_str(),
              diff, moved);
  return diff;
}

TEST(TrainerMpi, DataParallelEqualsOneRankWithTheGlobalBatch) {
  const int n = world().size();
  for (auto opt : {OptimizerKind::kAdamW, OptimizerKind::kSgd}) {
    TrainConfig d = small_config();
    d.optimizer = opt;
    d.clip_grad = opt == OptimizerKind::kSgd ? 0.5 : 0.0;
    if (opt == OptimizerKind::kSgd) d.lr = 0.05;
    d.micro_batch = 8;
    d.global_batch = 8 * n;
    TrainConfig r = d;
    r.micro_batch = 0;  // one rank, the whole global batch at once
    EXPECT_LT(max_param_diff(d, r, std::string("ddp-") + optimizer_name(opt)), 1e-5);
  }
}

TEST(TrainerMpi, ZeroOneEqualsOneRank) {
  const int n = world().size();
  TrainConfig d = small_config();
  d.zero = true;
  d.clip_grad = 0.3;
  d.micro_batch = 8;
  d.global_batch = 8 * n;
  TrainConfig r = d;
  r.zero = false;
  r.micro_batch = 0;
  EXPECT_LT(max_param_diff(d, r, "zero1"), 1e-5);
}

TEST(TrainerMpi, TensorParallelTwoEqualsOneRank) {
  const int n = world().size();
  if (n % 2 != 0) GTEST_SKIP() << "TP=2 needs an even number of ranks";
  TrainConfig d = small_config();
  d.tp = 2;
  d.clip_grad = 0.3;
  d.micro_batch = 8;
  d.global_batch = 8 * (n / 2);
  TrainConfig r = d;
  r.tp = 1;
  r.micro_batch = 0;
  EXPECT_LT(max_param_diff(d, r, "tp2"), 1e-5);
}

TEST(TrainerMpi, AccumulationEqualsMoreRanks) {
  // n ranks x 1 micro-batch each == 1 rank x n micro-batches (the reference accumulates).
  const int n = world().size();
  TrainConfig d = small_config();
  d.micro_batch = 6;
  d.global_batch = 6 * n;
  TrainConfig r = d;  // micro_batch 6 on one rank: accumulation over n micro-batches
  EXPECT_LT(max_param_diff(d, r, "accumulation"), 1e-5);
  // And with accumulation on the distributed side too (2 micro-batches per rank).
  TrainConfig d2 = d;
  d2.micro_batch = 3;
  EXPECT_LT(max_param_diff(d2, r, "accumulation-2"), 1e-5);
}

// The decoder LM: a small text made here (every rank writes the same file).
TrainConfig small_lm_config(const std::string& dir) {
  const std::string path = dir + "/text-" + std::to_string(world().rank()) + ".txt";
  {
    std::ofstream out(path);
    uint64_t x = 99;
    const char* words[] = {"and", "the", "light", "was", "good", "in", "earth", "said", "God"};
    for (int i = 0; i < 2000; ++i) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      out << words[(x >> 33) % 9] << (i % 9 == 8 ? ".\n" : " ");
    }
  }
  TrainConfig c = small_config();
  c.model = "lm";
  c.data = path;
  c.lm_layers = 2;
  c.lm_hidden = 16;
  c.lm_heads = 4;
  c.lm_kv_heads = 2;
  c.lm_intermediate = 32;
  c.seq_len = 12;
  return c;
}

TEST(TrainerMpi, DecoderLmDataZeroTensorParallelAndAccumulationEqualOneRank) {
  const int n = world().size();
  const std::string dir = shared_tmp("lmdata");
  TrainConfig d = small_lm_config(dir);
  d.micro_batch = 4;
  d.global_batch = 4 * n;
  d.clip_grad = 1.0;
  TrainConfig r = d;
  r.micro_batch = 0;
  EXPECT_LT(max_param_diff(d, r, "lm-ddp"), 1e-5);
  TrainConfig z = d;
  z.zero = true;
  EXPECT_LT(max_param_diff(z, r, "lm-zero1"), 1e-5);
  // Accumulation: n ranks x 1 micro-batch of 4 == 1 rank x n micro-batches of 4.
  TrainConfig ra = d;
  EXPECT_LT(max_param_diff(d, ra, "lm-accumulation"), 1e-5);
  if (n % 2 == 0) {
    TrainConfig t = d;
    t.tp = 2;
    t.global_batch = 4 * (n / 2);
    TrainConfig rt = t;
    rt.tp = 1;
    rt.micro_batch = 0;
    EXPECT_LT(max_param_diff(t, rt, "lm-tp2"), 1e-5);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (world().rank() == 0) fs::remove_all(dir);
}

TEST(TrainerMpi, BucketsAreReducedDuringBackward) {
  if (world().size() < 2) GTEST_SKIP() << "needs 2+ ranks";
  sharding::MpiCommunicator self(MPI_COMM_SELF, "self");
  DigitsModelConfig mc;
  mc.dim = 16;
  mc.depth = 2;
  mc.heads = 2;
  DigitsClassifier model(mc, 1, nullptr);
  OptimizerOptions oo;
  oo.bucket_mb = 0.004;
  DataParallel ddp(model.params().infos(), oo, &world(), nullptr);
  ASSERT_GE(ddp.num_buckets(), 3);
  // Reverse registration order: the head (registered last) is in the first bucket.
  EXPECT_EQ(ddp.bucket_names(0).front(), "head.bias");
  auto x = torch::rand({4, 64}) * 16;
  ddp.prepare_backward(true);
  model.forward(x).sum().backward();
  ddp.finish_backward();
  EXPECT_GE(ddp.times().buckets_launched_in_backward, ddp.num_buckets() - 1);
  // Gradients are the average over ranks: every rank holds the same values.
  for (const auto& p : ddp.params()) {
    auto g = p.param.grad().clone();
    auto all = world().all_gather(g);
    EXPECT_TRUE(torch::equal(all[0], all[world().size() - 1])) << p.name;
  }
}

TEST(TrainerMpi, StopRequestCheckpointsAndResumesBitwise) {
  const int n = world().size();
  const std::string dir = shared_tmp("stop");
  TrainConfig c = small_config();
  c.steps = 12;
  c.micro_batch = 4;
  c.global_batch = 4 * n;
  c.zero = n > 1;
  c.checkpoint_every = 100;  // only the stop and the end write one
  std::vector<double> full, resumed;
  TrainHooks record;
  record.on_step = [&](const nlohmann::json& r) { full.push_back(r.at("loss").get<double>()); };
  TrainConfig a = c;
  a.checkpoint_dir = dir + "/a";
  train(a, world(), record);

  TrainConfig b = c;
  b.checkpoint_dir = dir + "/b";
  int64_t polls = 0;
  TrainHooks stop;
  // Only the last rank asks (a signal may reach one rank): every rank must stop together.
  stop.stop_requested = [&] { return world().rank() == n - 1 && ++polls == 5; };
  std::vector<double> first;
  stop.on_step = [&](const nlohmann::json& r) { first.push_back(r.at("loss").get<double>()); };
  auto r1 = train(b, world(), stop);
  EXPECT_TRUE(r1.preempted);
  EXPECT_EQ(r1.steps_done, 5);
  ASSERT_TRUE(latest_checkpoint(b.checkpoint_dir).has_value());
  b.resume = true;
  TrainHooks rec2;
  rec2.on_step = [&](const nlohmann::json& r) { first.push_back(r.at("loss").get<double>()); };
  auto r2 = train(b, world(), rec2);
  EXPECT_EQ(r2.first_step, 5);
  EXPECT_EQ(r2.steps_done, 12);
  if (world().rank() == 0) {
    ASSERT_EQ(first.size(), full.size());
    for (size_t i = 0; i < full.size(); ++i) {
      EXPECT_EQ(first[i], full[i]) << "step " << i + 1 << " (bitwise)";
    }
    auto pa = read_tensors(*latest_checkpoint(a.checkpoint_dir) + "/model.safetensors");
    auto pb = read_tensors(*latest_checkpoint(b.checkpoint_dir) + "/model.safetensors");
    for (const auto& [name, t] : pa) EXPECT_TRUE(torch::equal(t, pb.at(name))) << name;
    fs::remove_all(dir);
  }
}

// Runs `c` and returns the agreed error message ("" if it trained).
std::string train_error(const TrainConfig& c) {
  try {
    train(c, world());
  } catch (const CollectiveError& e) {
    return e.message();
  }
  return "";
}

TEST(TrainerMpi, BadConfigsEndEveryRankWithOneMessage) {
  const int n = world().size();
  TrainConfig c = small_config();
  c.steps = 2;
  c.global_batch = 4 * n + (n > 1 ? 1 : 0);
  c.micro_batch = 4;
  if (n > 1) {
    EXPECT_NE(train_error(c).find("is not divisible by data-parallel ranks x micro_batch"),
              std::string::npos);
  }
  c = small_config();
  c.data = "/nonexistent/digits.csv.gz";
  EXPECT_NE(train_error(c).find("config key data: file /nonexistent/digits.csv.gz does not exist"),
            std::string::npos);
  // Two good steps, then a learning rate that blows the weights up: the non-finite loss (or
  // parameters) stops the run before the optimizer step / the checkpoint, and the good checkpoint
  // stays the latest, unchanged.
  const std::string dir = shared_tmp("nan");
  c = small_config();
  c.optimizer = OptimizerKind::kSgd;
  c.momentum = 0;
  c.lr = 0.01;
  c.warmup_steps = 0;
  c.steps = 2;
  c.global_batch = 4 * n;
  c.checkpoint_dir = dir;
  c.checkpoint_every = 1;
  train(c, world());
  const auto good = read_tensors(*latest_checkpoint(dir) + "/model.safetensors");
  c.steps = 10;
  c.lr = 1e38;
  c.min_lr = c.lr;
  c.resume = true;
  const std::string msg = train_error(c);
  EXPECT_NE(msg.find("stopped before"), std::string::npos) << msg;
  auto latest = latest_checkpoint(dir);
  ASSERT_TRUE(latest.has_value());
  EXPECT_NE(msg.find("the last good checkpoint " + *latest + " is kept"), std::string::npos) << msg;
  EXPECT_NE(fs::path(*latest).filename(), "step-00000010");
  // What it kept is finite (the diverged state never replaced it).
  EXPECT_TRUE(std::isfinite(read_json(*latest + "/trainer_state.json").at("loss").get<double>()));
  auto params = read_tensors(*latest + "/model.safetensors");
  for (const auto& [name, t] : params) EXPECT_TRUE(torch::isfinite(t).all().item<bool>()) << name;
  (void)good;
  MPI_Barrier(MPI_COMM_WORLD);
  if (world().rank() == 0) fs::remove_all(dir);
}

}  // namespace
}  // namespace tessera::training
