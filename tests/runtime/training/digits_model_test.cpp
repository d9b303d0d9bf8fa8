// The digits cluster-attention classifier: its gradients against an independent pure-PyTorch
// implementation written from the formulas (digits_reference.py, float64, run by the python3 whose
// torch matches libtorch), the neighbour structure it builds, and its deterministic,
// TP-independent initialisation.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "runtime/models/safetensors.h"
#include "runtime/training/autocast.h"
#include "runtime/training/checkpoint.h"
#include "runtime/training/digits_data.h"
#include "runtime/training/digits_model.h"
#include "runtime/training/train_config.h"
#include "sharding/mpi/mpi_communicator.h"

namespace tessera::training {
namespace {

namespace fs = std::filesystem;

void write(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& ts) {
  std::vector<models::TensorToWrite> out;
  for (const auto& [name, t0] : ts) {
    auto t = t0.detach().contiguous();
    models::TensorToWrite w;
    w.name = name;
    w.dtype = t.scalar_type() == torch::kLong
                  ? DType::kI64
                  : (t.scalar_type() == torch::kBool ? DType::kBool : DType::kF32);
    if (t.scalar_type() == torch::kDouble) t = t.to(torch::kFloat);
    w.shape = t.sizes().vec();
    w.bytes.resize(t.numel() * t.element_size());
    std::memcpy(w.bytes.data(), t.data_ptr(), w.bytes.size());
    out.push_back(std::move(w));
  }
  models::write_safetensors(path, out);
}

TEST(DigitsModel, GradientsEqualAPurePyTorchImplementation) {
  const char* py = std::getenv("TESSERA_TORCH_PYTHON");
  if (py == nullptr || *py == '\0') GTEST_SKIP() << "no python3 with torch (TESSERA_TORCH_PYTHON)";
  auto data = load_digits(default_data_path("digits"));
  DigitsModelConfig mc;
  mc.dim = 24;
  mc.heads = 3;
  mc.depth = 2;
  mc.nearest = 3;
  DigitsClassifier model(mc, 11, nullptr);
  // Train-like weights: perturb the zero-initialised biases and unit norms so every term matters.
  {
    torch::NoGradGuard g;
    torch::manual_seed(3);
    for (const auto& p : model.params().all()) p.local.add_(torch::randn_like(p.local) * 0.1);
  }
  const int64_t B = 5;
  auto x = torch::from_blob(data.train.pixels.data(), {B, 64}, torch::kFloat).clone();
  auto y = torch::from_blob(data.train.labels.data(), {B}, torch::kLong).clone();
  auto logits = model.forward(x);
  auto loss = at::cross_entropy_loss(logits, y);
  loss.backward();

  char tmpl[] = "/tmp/tessera-digits-ref-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  std::vector<std::pair<std::string, torch::Tensor>> params, grads;
  for (const auto& p : model.params().all()) {
    params.emplace_back(p.name, p.local);
    ASSERT_TRUE(p.local.grad().defined()) << p.name;
    grads.emplace_back("grad." + p.name, p.local.grad());
  }
  grads.emplace_back("loss", loss.detach().reshape({1}));
  write(dir + "/model.safetensors", params);
  write(dir + "/grads.safetensors", grads);
  write(dir + "/batch.safetensors", {{"pixels", x},
                                     {"labels", y},
                                     {"idx", model.neighbor_idx().expand({B, 64, -1})},
                                     {"mask", model.neighbor_mask().expand({B, 64, -1})},
                                     {"pos", model.positions().expand({B, 64, 2})}});
  std::ofstream(dir + "/config.json") << model.config().to_json().dump();
  const std::string script = std::string(std::getenv("TESSERA_SOURCE_DIR")) +
                             "/tests/runtime/training/digits_reference.py";
  const std::string cmd = std::string(py) + " " + script + " " + dir;
  const int rc = std::system(cmd.c_str());
  EXPECT_EQ(rc, 0) << cmd;
  fs::remove_all(dir);
}

TEST(DigitsModel, Bf16AutocastRunsTheForwardInBf16) {
  DigitsModelConfig mc;
  mc.dim = 32;
  DigitsClassifier model(mc, 2, nullptr);
  auto x = torch::rand({6, 64}) * 16;
  torch::Tensor fp32, bf16, probe;
  {
    torch::NoGradGuard g;
    fp32 = model.forward(x);
    AutocastScope autocast(true);
    bf16 = model.forward(x);
    probe = torch::linear(x, torch::ones({3, 64}));
  }
  EXPECT_EQ(probe.scalar_type(), torch::kBFloat16);  // autocast is on inside the scope
  EXPECT_EQ(bf16.scalar_type(), torch::kFloat);      // the logits come back in fp32
  const double diff = (bf16 - fp32).abs().max().item<double>();
  EXPECT_GT(diff, 1e-5);                                    // bf16 rounding shows...
  EXPECT_LT(diff, 0.05 * fp32.abs().max().item<double>());  // ...and stays small
  EXPECT_EQ(torch::linear(x, torch::ones({3, 64})).scalar_type(), torch::kFloat);  // restored
}

TEST(DigitsModel, NeighboursComeFromBalancedClusters) {
  DigitsModelConfig mc;
  mc.cluster_size = 8;
  mc.nearest = 3;
  DigitsClassifier model(mc, 0, nullptr);
  const auto& idx = model.neighbor_idx();  // [1, 64, 24]
  ASSERT_EQ(idx.sizes(), (std::vector<int64_t>{1, 64, 24}));
  EXPECT_TRUE(model.neighbor_mask().all().item<bool>());  // 64 = 8 full clusters, no padding
  // Every token attends to itself (its own cluster is its nearest) and to 24 distinct tokens.
  for (int64_t n = 0; n < 64; ++n) {
    auto row = idx[0][n];
    EXPECT_TRUE(row.eq(n).any().item<bool>()) << n;
    EXPECT_EQ(std::get<0>(at::_unique(row)).numel(), 24) << n;
  }
}

TEST(DigitsModel, InitialisationIsDeterministic) {
  DigitsModelConfig mc;
  mc.dim = 16;
  DigitsClassifier a(mc, 5, nullptr), b(mc, 5, nullptr), c(mc, 6, nullptr);
  auto fa = a.params().gather_full(), fb = b.params().gather_full(), fc = c.params().gather_full();
  bool any_diff = false;
  for (size_t i = 0; i < fa.size(); ++i) {
    EXPECT_TRUE(torch::equal(fa[i].second, fb[i].second)) << fa[i].first;
    any_diff = any_diff || !torch::equal(fa[i].second, fc[i].second);
  }
  EXPECT_TRUE(any_diff);
}

TEST(DigitsData, ReadsSklearnsFile) {
  auto d = load_digits(default_data_path("digits"));
  EXPECT_EQ(d.train.size() + d.test.size(), 1797);
  EXPECT_EQ(d.test.size(), 360);
  // sklearn's documented class sizes for the full set.
  std::vector<int> counts(10, 0);
  for (auto l : d.train.labels) ++counts[l];
  for (auto l : d.test.labels) ++counts[l];
  EXPECT_EQ(counts, (std::vector<int>{178, 182, 177, 183, 181, 182, 181, 179, 174, 180}));
  EXPECT_THROW(load_digits("/nonexistent.csv.gz"), Error);
  // A bad field names the file's own line (blank lines counted) and the field; "5x" was read as
  // 5. zlib reads a plain file as it is.
  const std::string good_row = [] {
    std::string r;
    for (int i = 0; i < 64; ++i) r += std::to_string(i % 17) + ",";
    return r + "3";
  }();
  const auto tmp = std::filesystem::temp_directory_path() / "tessera_bad_digits.csv";
  for (const auto& [bad_row, want] : std::vector<std::pair<std::string, std::string>>{
           {"5x" + good_row.substr(1), "line 4: '5x' is not a number"},
           {good_row.substr(0, good_row.size() - 1) + "3.5", "line 4: label 3.5 is not a digit"},
           {"17" + good_row.substr(1), "line 4: pixel 0 = 17 is outside [0, 16]"}}) {
    std::ofstream(tmp) << good_row << "\n\n" << good_row << "\r\n" << bad_row << "\n";
    try {
      load_digits(tmp.string());
      ADD_FAILURE() << bad_row;
    } catch (const Error& e) {
      EXPECT_NE(e.message().find(want), std::string::npos) << e.message();
    }
  }
  std::filesystem::remove(tmp);
  // Every epoch is a permutation; epochs differ; the order does not depend on anything but seed.
  SampleStream s(100, 3), t(100, 3);
  std::vector<int> seen(100, 0);
  bool differs = false;
  for (int i = 0; i < 100; ++i) {
    ++seen[s.at(i)];
    differs = differs || s.at(i) != t.at(100 + i);
  }
  for (int v : seen) EXPECT_EQ(v, 1);
  EXPECT_TRUE(differs);
}

TEST(TrainConfig, ReadsJsonTomlAndRejectsBadValues) {
  char tmpl[] = "/tmp/tessera-cfg-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  std::ofstream(dir + "/a.toml") << "# run\nsteps = 30\noptimizer = \"sgd\"\nlr = 1e-2\n"
                                    "zero = true\ncheckpoint_dir = 'x y'  # comment\n";
  auto c = TrainConfig::from_json(TrainConfig::read_file(dir + "/a.toml"));
  EXPECT_EQ(c.steps, 30);
  EXPECT_EQ(c.optimizer, OptimizerKind::kSgd);
  EXPECT_DOUBLE_EQ(c.lr, 1e-2);
  EXPECT_TRUE(c.zero);
  EXPECT_EQ(c.checkpoint_dir, "x y");
  std::ofstream(dir + "/b.json") << R"({"global-batch": 12, "micro_batch": 3})";
  auto b = TrainConfig::from_json(TrainConfig::read_file(dir + "/b.json"));
  EXPECT_EQ(b.global_batch, 12);
  EXPECT_EQ(b.accumulation_steps(2), 2);
  auto msg = [](auto f) {
    try {
      f();
    } catch (const Error& e) {
      return e.message();
    }
    return std::string();
  };
  EXPECT_EQ(msg([&] {
              TrainConfig::from_json({{"optimizer", "adam"}});
            }),
            "config key optimizer: unknown optimizer 'adam' (expected adamw or sgd)");
  EXPECT_EQ(msg([&] { TrainConfig::from_json({{"stpes", 3}}); }), "unknown config key 'stpes'");
  EXPECT_EQ(msg([&] {
              TrainConfig::from_json({{"steps", "many"}});
            }),
            "config key steps must be an integer, got \"many\"");
  EXPECT_EQ(b.accumulation_steps(4), 1);
  TrainConfig odd = b;
  odd.global_batch = 10;
  EXPECT_EQ(msg([&] { odd.accumulation_steps(4); }),
            "config key global_batch=10 is not divisible by data-parallel ranks x micro_batch = 4 "
            "x 3 = 12");
  std::ofstream(dir + "/c.yaml") << "steps: 3\n";
  EXPECT_NE(
      msg([&] { TrainConfig::read_file(dir + "/c.yaml"); }).find("must end in .json or .toml"),
      std::string::npos);
  fs::remove_all(dir);
}

// The digits of a pip scikit-learn: a machine without Debian's python3-sklearn (the GPU machine's
// image) has it in a venv whose bin/ is on PATH.
TEST(TrainConfig, DigitsFoundInAVenvOnPath) {
  char tmpl[] = "/tmp/tessera-venv-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const fs::path venv = tmpl;
  const fs::path data = venv / "lib/python3.12/site-packages/sklearn/datasets/data";
  fs::create_directories(data);
  fs::create_directories(venv / "bin");
  std::ofstream(data / "digits.csv.gz") << "x";
  const std::string missing = (venv / "no/digits.csv.gz").string();
  const std::string path = "/nonexistent/bin::" + (venv / "bin").string();
  EXPECT_EQ(find_sklearn_digits(missing, path.c_str()), (data / "digits.csv.gz").string());
  // The Debian path first when it exists.
  const std::string debian = (venv / "bin").string();
  EXPECT_EQ(find_sklearn_digits(debian, path.c_str()), debian);
  fs::remove_all(venv / "lib");  // gone: /usr's or /usr/local's, else `missing`
  EXPECT_NE(find_sklearn_digits(missing, path.c_str()), (data / "digits.csv.gz").string());
  fs::remove_all(venv);
}

TEST(TrainConfig, WarmupThenCosine) {
  TrainConfig c;
  c.steps = 110;
  c.warmup_steps = 10;
  c.lr = 1.0;
  c.min_lr = 0.1;
  EXPECT_DOUBLE_EQ(learning_rate(c, 0), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(c, 9), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate(c, 10), 1.0);
  EXPECT_NEAR(learning_rate(c, 109), 0.1, 1e-12);
  // Half way through the decay: the mean of lr and min_lr.
  c.steps = 111;
  EXPECT_NEAR(learning_rate(c, 60), 0.55, 1e-12);
}

}  // namespace
}  // namespace tessera::training
