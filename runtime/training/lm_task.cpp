// The decoder LM as a training task: a plain-text file read as bytes (the byte tokenizer's ids
// 0..255), windows of seq_len + 1 bytes at offsets drawn from (seed, stream position) in the first
// 95% of the file, next-byte cross-entropy; held-out loss (and bits per byte) on fixed windows of
// the last 5%.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "runtime/tokenizers/byte_tokenizer.h"
#include "runtime/training/lm_model.h"
#include "runtime/training/train_task.h"

namespace tessera::training {

namespace {

uint64_t mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TESSERA_CHECK(in.good(), "config key data: cannot read ", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class LmTask final : public TrainTask {
 public:
  LmTask(const TrainConfig& c, sharding::Communicator* tp)
      : text_(read_all(c.data)), seq_(c.seq_len), seed_(c.seed), model_(lm_config(c), c.seed, tp) {
    TESSERA_CHECK(static_cast<int64_t>(text_.size()) >= 40 * (seq_ + 1),
                  "config key data: ", c.data, " has ", text_.size(),
                  " bytes, fewer than 40 windows of seq_len + 1 = ", seq_ + 1);
    split_ = static_cast<int64_t>(text_.size()) * 95 / 100;
  }

  static models::ModelConfig lm_config(const TrainConfig& c) {
    models::ModelConfig m;
    m.model_type = "qwen2";
    m.vocab_size = runtime::ByteTokenizer::kVocabSize;
    m.hidden_size = c.lm_hidden;
    m.intermediate_size = c.lm_intermediate;
    m.num_hidden_layers = c.lm_layers;
    m.num_attention_heads = c.lm_heads;
    m.num_key_value_heads = c.lm_kv_heads;
    TESSERA_CHECK(c.lm_hidden % c.lm_heads == 0, "config key lm_hidden=", c.lm_hidden,
                  " is not divisible by lm_heads=", c.lm_heads);
    m.head_dim = c.lm_hidden / c.lm_heads;
    m.max_position_embeddings = 4096;
    m.rope_theta = 10000.0;
    m.rms_norm_eps = 1e-6;
    m.qkv_bias = true;
    m.tie_word_embeddings = false;
    m.bos_token_id = runtime::ByteTokenizer::kBos;
    m.eos_token_ids = {runtime::ByteTokenizer::kEos};
    m.layer_windows.assign(c.lm_layers, 0);
    for (int64_t l = 1; l < c.lm_layers; l += 2) m.layer_windows[l] = c.lm_window;
    return m;
  }

  ShardedParams& params() override { return model_.params(); }
  int64_t units_per_sample() const override { return seq_; }
  const char* unit_name() const override { return "tokens"; }

  // [count, seq + 1] byte ids of the windows starting at `offsets`.
  torch::Tensor windows(const std::vector<int64_t>& offsets) const {
    auto t = torch::empty({static_cast<int64_t>(offsets.size()), seq_ + 1}, torch::kLong);
    auto a = t.accessor<int64_t, 2>();
    for (size_t i = 0; i < offsets.size(); ++i) {
      for (int64_t j = 0; j <= seq_; ++j) {
        a[i][j] = static_cast<unsigned char>(text_[offsets[i] + j]);
      }
    }
    return t;
  }

  torch::Tensor lm_loss(const torch::Tensor& w, at::Reduction::Reduction reduction) {
    auto inputs = w.narrow(1, 0, seq_);
    auto targets = w.narrow(1, 1, seq_);
    auto logits = model_.forward(inputs);
    return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}), {},
                                  reduction, -100, 0.0);
  }

  torch::Tensor loss(int64_t begin, int64_t count) override {
    std::vector<int64_t> offsets(count);
    const uint64_t span = static_cast<uint64_t>(split_ - seq_ - 1);
    for (int64_t i = 0; i < count; ++i) {
      offsets[i] = static_cast<int64_t>(
          mix(seed_ * 0x2545f4914f6cdd1dull + static_cast<uint64_t>(begin + i)) % span);
    }
    return lm_loss(windows(offsets), at::Reduction::Mean);
  }

  nlohmann::json evaluate(sharding::Communicator& world, int dp_rank, int dp_size) override {
    torch::NoGradGuard no_grad;
    // 32 fixed windows spread over the held-out tail; each data-parallel rank takes its share.
    const int64_t tail = static_cast<int64_t>(text_.size()) - split_ - seq_ - 1;
    std::vector<int64_t> offsets;
    for (int64_t i = dp_rank; i < 32; i += dp_size) offsets.push_back(split_ + tail * i / 32);
    double sum = 0;
    if (!offsets.empty()) sum = lm_loss(windows(offsets), at::Reduction::Sum).item<double>();
    auto t = torch::tensor({sum, static_cast<double>(offsets.size() * seq_)}, torch::kDouble);
    if (params().tp_rank() != 0) t.zero_();
    world.all_reduce(t, sharding::ReduceOp::kSum);
    const double nll = t[0].item<double>() / t[1].item<double>();
    return {{"val_loss", nll}, {"val_bits_per_byte", nll / std::log(2.0)}};
  }

  nlohmann::json model_config() const override {
    return nlohmann::json::parse(model_.config().to_json_text());
  }

 private:
  std::string text_;
  int64_t seq_;
  uint64_t seed_;
  int64_t split_ = 0;
  DecoderLM model_;
};

}  // namespace

std::unique_ptr<TrainTask> make_lm_task(const TrainConfig& config, sharding::Communicator* tp) {
  return std::make_unique<LmTask>(config, tp);
}

}  // namespace tessera::training
