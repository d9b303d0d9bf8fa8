#include "runtime/models/tiny_model.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "runtime/models/safetensors.h"
#include "runtime/tokenizers/byte_tokenizer.h"

namespace tessera::models {

namespace fs = std::filesystem;

namespace {

// Bumped whenever the tiny model's weights or config change, so stale copies are rewritten.
constexpr const char* kTinyVersion = "tiny-v1";

// splitmix64: a fixed generator, so the weights are identical on every machine and library
// version (torch's generators are not promised to be).
struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [-1, 1).
  float uniform() { return static_cast<float>((next() >> 40) * (1.0 / 8388608.0) - 1.0); }
};

uint64_t name_seed(const std::string& name) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return h;
}

TensorToWrite make_tensor(const std::string& name, std::vector<int64_t> shape, float scale,
                          float offset = 0.0f) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  std::vector<float> values(n);
  SplitMix64 rng{name_seed(name)};
  for (auto& v : values) v = offset + scale * rng.uniform();
  TensorToWrite t{name, DType::kF32, std::move(shape), {}};
  t.bytes.resize(n * sizeof(float));
  std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
  return t;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_text_atomic(const fs::path& p, const std::string& text) {
  const fs::path tmp = p.string() + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    TESSERA_CHECK(out.good(), "cannot write '", tmp.string(), "'");
  }
  fs::rename(tmp, p);
}

}  // namespace

ModelConfig tiny_model_config() {
  ModelConfig c;
  c.model_type = "qwen2";
  c.vocab_size = runtime::ByteTokenizer::kVocabSize;
  c.hidden_size = 128;
  c.intermediate_size = 256;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 4;
  c.head_dim = 16;
  c.max_position_embeddings = 4096;
  c.rope_theta = 10000.0;
  c.rms_norm_eps = 1e-6;
  c.qkv_bias = true;  // Qwen2 layout: q/k/v biases, none on o_proj
  c.tie_word_embeddings = false;
  c.bos_token_id = runtime::ByteTokenizer::kBos;
  c.eos_token_ids = {runtime::ByteTokenizer::kEos};
  c.layer_windows = {0, 16, 0, 16};  // full, sliding(16), full, sliding(16)
  return c;
}

std::string tiny_model_dir() {
  if (const char* d = std::getenv("TESSERA_MODEL_CACHE"); d && *d) return fs::path(d) / "tiny";
  if (const char* d = std::getenv("XDG_CACHE_HOME"); d && *d) {
    return fs::path(d) / "tessera" / "tiny";
  }
  const char* home = std::getenv("HOME");
  return fs::path(home && *home ? home : "/tmp") / ".cache" / "tessera" / "tiny";
}

std::string ensure_tiny_model(const std::string& dir) {
  const ModelConfig c = tiny_model_config();
  const fs::path root(dir);
  const fs::path config_path = root / "config.json";
  const fs::path weights_path = root / "model.safetensors";
  const fs::path version_path = root / "tessera_version.txt";
  std::error_code ec;
  if (fs::exists(version_path, ec) && read_text(version_path) == kTinyVersion &&
      fs::exists(config_path, ec) && fs::exists(weights_path, ec)) {
    return dir;
  }
  fs::create_directories(root, ec);
  TESSERA_CHECK(!ec, "cannot create model folder '", dir, "': ", ec.message());

  std::vector<TensorToWrite> ts;
  const int64_t h = c.hidden_size, q = c.num_attention_heads * c.head_dim,
                kv = c.num_key_value_heads * c.head_dim, inter = c.intermediate_size;
  // Uniform(-a, a) with a = sqrt(3 / fan_in) gives unit-variance projections; norms near 1.
  auto lin = [](int64_t fan_in) { return static_cast<float>(std::sqrt(3.0 / fan_in)); };
  ts.push_back(make_tensor("model.embed_tokens.weight", {c.vocab_size, h}, 1.0f));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    ts.push_back(make_tensor(p + "input_layernorm.weight", {h}, 0.1f, 1.0f));
    ts.push_back(make_tensor(p + "self_attn.q_proj.weight", {q, h}, lin(h)));
    ts.push_back(make_tensor(p + "self_attn.q_proj.bias", {q}, 0.1f));
    ts.push_back(make_tensor(p + "self_attn.k_proj.weight", {kv, h}, lin(h)));
    ts.push_back(make_tensor(p + "self_attn.k_proj.bias", {kv}, 0.1f));
    ts.push_back(make_tensor(p + "self_attn.v_proj.weight", {kv, h}, lin(h)));
    ts.push_back(make_tensor(p + "self_attn.v_proj.bias", {kv}, 0.1f));
    ts.push_back(make_tensor(p + "self_attn.o_proj.weight", {h, q}, lin(q)));
    ts.push_back(make_tensor(p + "post_attention_layernorm.weight", {h}, 0.1f, 1.0f));
    ts.push_back(make_tensor(p + "mlp.gate_proj.weight", {inter, h}, lin(h)));
    ts.push_back(make_tensor(p + "mlp.up_proj.weight", {inter, h}, lin(h)));
    ts.push_back(make_tensor(p + "mlp.down_proj.weight", {h, inter}, lin(inter)));
  }
  ts.push_back(make_tensor("model.norm.weight", {h}, 0.1f, 1.0f));
  ts.push_back(make_tensor("lm_head.weight", {c.vocab_size, h}, lin(h) * 4.0f));

  write_safetensors(weights_path.string(), ts, {{"format", "pt"}, {"tessera", kTinyVersion}});
  write_text_atomic(config_path, c.to_json_text());
  write_text_atomic(version_path, kTinyVersion);
  return dir;
}

}  // namespace tessera::models
