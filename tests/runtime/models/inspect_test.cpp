// `tessera inspect` on a small hand-written model (Mistral-style: grouped-query attention, a
// sliding-window layer between two full ones, bfloat16 weights with float32 norms): every figure
// against values worked out by hand below, the library and the CLI's JSON agreeing, and named
// errors for a tensor-parallel size that does not divide the heads.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/error.h"
#include "runtime/models/inspect.h"
#include "runtime/models/safetensors.h"
#include "tests/support/subprocess.h"

namespace tessera::models {
namespace {

namespace fs = std::filesystem;

// hidden 64, 4 heads of 16, 2 KV heads, MLP 96, vocab 100, layers: full, sliding(32), full.
struct SmallModel {
  SmallModel() {
    char tmpl[] = "/tmp/tessera_inspect_XXXXXX";
    dir = mkdtemp(tmpl);
    std::ofstream(dir + "/config.json") << R"({
      "model_type": "mistral", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 96,
      "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
      "max_position_embeddings": 512, "sliding_window": 32,
      "layer_types": ["full_attention", "sliding_attention", "full_attention"]})";
    std::vector<TensorToWrite> t;
    auto add = [&](const std::string& name, DType dtype, std::vector<int64_t> shape) {
      int64_t n = 1;
      for (auto d : shape) n *= d;
      t.push_back({name, dtype, shape, std::vector<uint8_t>(n * dtype_size(dtype))});
    };
    add("model.embed_tokens.weight", DType::kBF16, {100, 64});
    for (int i = 0; i < 3; ++i) {
      const std::string p = "model.layers." + std::to_string(i) + ".";
      add(p + "self_attn.q_proj.weight", DType::kBF16, {64, 64});
      add(p + "self_attn.k_proj.weight", DType::kBF16, {32, 64});
      add(p + "self_attn.v_proj.weight", DType::kBF16, {32, 64});
      add(p + "self_attn.o_proj.weight", DType::kBF16, {64, 64});
      add(p + "mlp.gate_proj.weight", DType::kBF16, {96, 64});
      add(p + "mlp.up_proj.weight", DType::kBF16, {96, 64});
      add(p + "mlp.down_proj.weight", DType::kBF16, {64, 96});
      add(p + "input_layernorm.weight", DType::kF32, {64});
      add(p + "post_attention_layernorm.weight", DType::kF32, {64});
    }
    add("model.norm.weight", DType::kF32, {64});
    add("lm_head.weight", DType::kBF16, {100, 64});
    write_safetensors(dir + "/model.safetensors", t);
  }
  ~SmallModel() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string dir;
};

// Worked out by hand:
//   per layer: q 4096 + k 2048 + v 2048 + o 4096 + gate 6144 + up 6144 + down 6144 = 30720
//   bfloat16 parameters (61440 B), two norms 128 float32 (512 B): 30848 parameters.
//   embed_tokens and lm_head 6400 bfloat16 (12800 B) each; norm 64 float32 (256 B).
//   tp = 2: a layer keeps 30720 / 2 + 128 = 15488 parameters per rank, 30976 B in float16;
//   embed_tokens, lm_head 12800 B each, norm 128 B: 3 * 30976 + 2 * 12800 + 128 = 118656 B.
//   KV float16: 2 (K, V) * 2 heads * 16 * 2 B = 128 B per token per layer, 64 per rank.
//   max_model_len 100, batch 3, 20 tokens per step, pages of 16 tokens, one rank:
//     full:    cdiv(100, 16) = 7 pages * 16 * 64 = 7168 B per sequence
//     sliding: cdiv(min(31 + 20, 100), 16) + 1 = 5 pages = 5120 B per sequence
//     3 * (7168 + 5120 + 7168) = 58368 B.
TEST(Inspect, MatchesHandComputedFigures) {
  SmallModel m;
  InspectOptions o;
  o.tp = 2;
  o.dtype = DType::kF16;
  o.max_model_len = 100;
  o.batch = 3;
  o.max_num_batched_tokens = 20;
  const auto rep = inspect_model(m.dir, o);
  ASSERT_EQ(rep.layers.size(), 6u);
  EXPECT_EQ(rep.layers[0].name, "embed_tokens");
  EXPECT_EQ(rep.layers[0].by_dtype.at("bfloat16").bytes, 12800);
  for (int i = 1; i <= 3; ++i) {
    const auto& L = rep.layers[i];
    EXPECT_EQ(L.name, "layer " + std::to_string(i - 1));
    EXPECT_EQ(L.params, 30848);
    EXPECT_EQ(L.by_dtype.at("bfloat16").params, 30720);
    EXPECT_EQ(L.by_dtype.at("bfloat16").bytes, 61440);
    EXPECT_EQ(L.by_dtype.at("float32").bytes, 512);
    EXPECT_EQ(L.params_per_rank, 15488);
    EXPECT_EQ(L.weight_bytes_per_rank, 30976);
    EXPECT_EQ(L.kv_bytes_per_token, 128);
    EXPECT_EQ(L.kv_bytes_per_token_rank, 64);
    EXPECT_EQ(L.kv_bytes_per_rank, i == 2 ? 3 * 5120 : 3 * 7168) << L.name;
  }
  EXPECT_NE(rep.layers[2].kv_spec.find("sliding_window[window=32]"), std::string::npos);
  EXPECT_EQ(rep.layers[4].name, "norm");
  EXPECT_EQ(rep.layers[4].by_dtype.at("float32").bytes, 256);
  EXPECT_EQ(rep.layers[5].name, "lm_head");
  EXPECT_EQ(rep.total_by_dtype.at("bfloat16").bytes, 3 * 61440 + 2 * 12800);
  EXPECT_EQ(rep.total_by_dtype.at("float32").bytes, 3 * 512 + 256);
  EXPECT_EQ(rep.weight_bytes_per_rank, 118656);
  EXPECT_EQ(rep.kv_bytes_per_token, 3 * 128);
  EXPECT_EQ(rep.kv_bytes_per_token_rank, 3 * 64);
  EXPECT_EQ(rep.kv_bytes_per_rank, 58368);
  EXPECT_EQ(rep.total_bytes_per_rank(), 118656 + 58368);
}

// As stored (no --dtype): weights keep their dtypes, KV takes the dtype holding most bytes
// (bfloat16); int8 KV: 1 B per element plus two float32 scales per (token, KV head).
TEST(Inspect, AsStoredAndQuantisedKv) {
  SmallModel m;
  InspectOptions o;
  o.kv_quant = caches::KVQuant::kInt8;
  const auto rep = inspect_model(m.dir, o);
  EXPECT_EQ(rep.kv_dtype, "int8");
  EXPECT_EQ(rep.options.max_model_len, 512);
  EXPECT_EQ(rep.weight_bytes_per_rank, 3 * (61440 + 512) + 2 * 12800 + 256);
  // (2 * 2 heads * 16 * 1 B) + (2 heads * 2 * 4 B) = 64 + 16 = 80 B per token per layer.
  EXPECT_EQ(rep.kv_bytes_per_token, 3 * 80);
  InspectOptions plain;
  EXPECT_EQ(inspect_model(m.dir, plain).kv_dtype, "bfloat16");
  EXPECT_EQ(inspect_model(m.dir, plain).kv_bytes_per_token, 3 * 128);
}

// A layer number past int64 in a tensor name: std::stoll's out_of_range escaped as an exception no
// caller names; now an error naming the tensor and the number.
TEST(Inspect, LayerNumberPastInt64IsAnError) {
  SmallModel m;
  const std::string name = "model.layers.99999999999999999999999.mlp.up_proj.weight";
  write_safetensors(m.dir + "/model.safetensors",
                    {{name, DType::kF32, {2}, std::vector<uint8_t>(8)}});
  try {
    inspect_model(m.dir, InspectOptions{});
    FAIL() << "accepted " << name;
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("tensor '" + name + "' names layer 99999999999999999999999"),
              std::string::npos)
        << e.message();
  }
}

TEST(Inspect, BadOptionsAreNamed) {
  SmallModel m;
  InspectOptions o;
  o.tp = 3;
  try {
    inspect_model(m.dir, o);
    ADD_FAILURE() << "no error for tp=3";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("num_attention_heads=4 is not divisible by 3"),
              std::string::npos)
        << e.what();
  }
  o.tp = 1;
  o.batch = 0;
  EXPECT_THROW(inspect_model(m.dir, o), Error);
}

TEST(InspectCli, JsonAgreesWithTheLibrary) {
  SmallModel m;
  const std::string bin = testing::env_or_die("TESSERA_BIN");
  const auto r = testing::run_command(bin + " inspect " + m.dir +
                                      " --tp 2 --dtype float16 --max-model-len 100 --batch 3 "
                                      "--max-num-batched-tokens 20 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["per_rank"]["weight_bytes"], 118656);
  EXPECT_EQ(j["per_rank"]["kv_bytes"], 58368);
  EXPECT_EQ(j["per_rank"]["total_bytes"], 118656 + 58368);
  EXPECT_EQ(j["layers"][2]["kv_bytes_per_token"], 128);
  const auto t = testing::run_command(bin + " inspect " + m.dir + " --tp 2");
  ASSERT_EQ(t.exit_code, 0) << t.err;
  EXPECT_NE(t.out.find("layer 1"), std::string::npos) << t.out;
  const auto bad = testing::run_command(bin + " inspect " + m.dir + " --tp 3");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("num_attention_heads=4 is not divisible by 3"), std::string::npos)
      << bad.err;
}

}  // namespace
}  // namespace tessera::models
