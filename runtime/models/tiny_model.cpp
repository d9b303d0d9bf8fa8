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

// The tiny model's weights: the decoder LM that `tessera train` trained on the King James Version
// (public domain; scripts/train_lm.sh gives the command, which reproduces the file bit for bit),
// committed as runtime/models/tiny/model.safetensors (float32, 2.6 MB) and embedded here with
// .incbin. A new file needs a new kTinyVersion (stale copies are rewritten, and ccache, which does
// not hash the embedded file, recompiles).
extern "C" const unsigned char tessera_tiny_weights[];
extern "C" const unsigned char tessera_tiny_weights_end[];
__asm__(
    ".section .rodata\n"
    ".global tessera_tiny_weights\n"
    ".global tessera_tiny_weights_end\n"
    ".balign 64\n"
    "tessera_tiny_weights:\n"
    ".incbin \"" TESSERA_TINY_WEIGHTS
    "\"\n"
    "tessera_tiny_weights_end:\n"
    ".previous\n");

namespace fs = std::filesystem;

namespace {

// Bumped whenever the tiny model's weights or config change, so stale copies are rewritten.
constexpr const char* kTinyVersion = "tiny-kjv-v1";

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

  // The trained weights, embedded in the binary (see the top of this file).
  const auto size = static_cast<size_t>(tessera_tiny_weights_end - tessera_tiny_weights);
  const fs::path tmp = weights_path.string() + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(tessera_tiny_weights),
              static_cast<std::streamsize>(size));
    TESSERA_CHECK(out.good(), "cannot write '", tmp.string(), "'");
  }
  fs::rename(tmp, weights_path);
  write_text_atomic(config_path, c.to_json_text());
  write_text_atomic(version_path, kTinyVersion);
  return dir;
}

}  // namespace tessera::models
