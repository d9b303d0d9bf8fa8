// The decoder LM trained by `train`: its checkpoint loads in the inference decoder
// (runtime/models, what `tessera generate` runs) and in Hugging Face transformers (the test venv),
// both giving the training model's logits within 1e-4; a character-level text task's loss falls.
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "runtime/models/decoder_model.h"
#include "runtime/models/model_folder.h"
#include "runtime/models/safetensors.h"
#include "runtime/models/weights.h"
#include "runtime/training/checkpoint.h"
#include "runtime/training/lm_model.h"
#include "runtime/training/trainer.h"
#include "sharding/mpi/mpi_communicator.h"
#include "tests/runtime/models/contiguous_attention.h"

namespace tessera::training {
namespace {

namespace fs = std::filesystem;

// A few kilobytes of English-like text made here (no download; the KJV is for the real run).
std::string sample_text() {
  const char* words[] = {"the",  "light",     "and",   "darkness", "were", "divided",
                         "in",   "beginning", "earth", "waters",   "of",   "was",
                         "good", "said",      "let",   "there",    "be"};
  std::string s;
  uint64_t x = 12345;
  for (int i = 0; i < 3000; ++i) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    s += words[(x >> 33) % 17];
    s += (i % 11 == 10) ? ".\n" : " ";
  }
  return s;
}

TEST(LmModel, CheckpointLoadsInTheInferenceDecoderAndTransformers) {
  char tmpl[] = "/tmp/tessera-lm-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  std::ofstream(dir + "/text.txt") << sample_text();
  TrainConfig c;
  c.model = "lm";
  c.data = dir + "/text.txt";
  c.lm_layers = 2;
  c.lm_hidden = 32;
  c.lm_heads = 4;
  c.lm_kv_heads = 2;
  c.lm_intermediate = 64;
  c.seq_len = 24;
  c.steps = 30;
  c.global_batch = 8;
  c.lr = 3e-3;
  c.progress = "off";
  c.checkpoint_dir = dir + "/ck";
  std::vector<double> losses;
  TrainHooks hooks;
  hooks.on_step = [&](const nlohmann::json& r) { losses.push_back(r.at("loss").get<double>()); };
  sharding::MpiCommunicator self(MPI_COMM_SELF, "self");
  auto result = train(c, self, hooks);
  ASSERT_EQ(losses.size(), 30u);
  EXPECT_LT(losses.back(), 0.7 * losses.front()) << "the loss falls";
  EXPECT_TRUE(result.metrics.contains("val_loss"));
  const std::string ck = *latest_checkpoint(c.checkpoint_dir);

  // The training model with the checkpoint's weights.
  const auto config = models::ModelConfig::from_file(ck + "/config.json");
  DecoderLM lm(config, 999, nullptr);
  lm.params().load_full(read_tensors(ck + "/model.safetensors"));
  auto tokens =
      torch::tensor({84, 104, 101, 32, 108, 105, 103, 104, 116, 32, 119, 97, 115}, torch::kLong)
          .view({1, -1});
  torch::Tensor ours;
  {
    torch::NoGradGuard g;
    ours = lm.forward(tokens);
  }
  // The inference decoder (`tessera generate`'s model) on the same folder.
  auto folder = models::ModelFolder::open(ck);
  models::WeightLoader weights(folder);
  const int64_t T = tokens.size(1);
  models::DecoderModel decoder(config, weights, nullptr, T);
  auto pos = torch::arange(T, torch::kLong);
  models::testing::ContiguousAttention attention(decoder, T, T);
  auto dec = attention.forward(decoder, tokens.view({T}), pos);
  const double dec_diff = (dec - ours[0]).abs().max().item<double>();
  std::printf("inference decoder vs training forward: max |diff| %.3e\n", dec_diff);
  EXPECT_LT(dec_diff, 1e-4);

  // Sliding-window layers (the tiny model's alternation) through both forwards: a model with
  // window 4 on its odd layers, 13 tokens.
  {
    auto wc = config;
    wc.layer_windows = {0, 4};
    DecoderLM wlm(wc, 5, nullptr);
    torch::NoGradGuard g;
    auto wours = wlm.forward(tokens);
    std::vector<models::TensorToWrite> ws;
    for (const auto& [name, t] : wlm.params().gather_full()) {
      models::TensorToWrite w{name, DType::kF32, t.sizes().vec(), {}};
      w.bytes.resize(t.numel() * 4);
      std::memcpy(w.bytes.data(), t.contiguous().data_ptr(), w.bytes.size());
      ws.push_back(std::move(w));
    }
    fs::create_directories(dir + "/windowed");
    models::write_safetensors(dir + "/windowed/model.safetensors", ws, {{"format", "pt"}});
    std::ofstream(dir + "/windowed/config.json") << wc.to_json_text();
    auto wfolder = models::ModelFolder::open(dir + "/windowed");
    models::WeightLoader wweights(wfolder);
    models::DecoderModel wdec(models::ModelConfig::from_file(dir + "/windowed/config.json"),
                              wweights, nullptr, T);
    models::testing::ContiguousAttention wattention(wdec, T, T);
    const double wdiff =
        (wattention.forward(wdec, tokens.view({T}), pos) - wours[0]).abs().max().item<double>();
    std::printf("sliding window 4: inference decoder vs training forward: max |diff| %.3e\n",
                wdiff);
    EXPECT_LT(wdiff, 1e-4);
  }

  // Hugging Face transformers in the test venv.
  const char* py = std::getenv("TESSERA_VENV_PYTHON");
  if (py == nullptr || !fs::exists(py)) {
    fs::remove_all(dir);
    GTEST_SKIP() << "no test venv (TESSERA_VENV_PYTHON) for the transformers comparison";
  }
  std::vector<models::TensorToWrite> out;
  for (auto [name, t] :
       {std::pair<std::string, torch::Tensor>{"tokens", tokens}, {"logits", ours.contiguous()}}) {
    models::TensorToWrite w;
    w.name = name;
    w.dtype = t.scalar_type() == torch::kLong ? DType::kI64 : DType::kF32;
    w.shape = t.sizes().vec();
    w.bytes.resize(t.numel() * t.element_size());
    std::memcpy(w.bytes.data(), t.data_ptr(), w.bytes.size());
    out.push_back(std::move(w));
  }
  models::write_safetensors(dir + "/expected.safetensors", out, {{"format", "pt"}});
  const std::string cmd =
      std::string("HF_HUB_OFFLINE=1 ") + py + " " + std::getenv("TESSERA_SOURCE_DIR") +
      "/tests/runtime/training/lm_transformers.py " + ck + " " + dir + "/expected.safetensors";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace tessera::training
