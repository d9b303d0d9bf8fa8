// LoRA on BERT encoders against PEFT (test venv): random BertForSequenceClassification / BertModel
// made by transformers and PEFT adapters with random lora_A / lora_B (and a random saved
// classifier), made by encoder_lora_checkpoints.py in a temporary folder. Unmerged outputs
// (segmented LoRA kernel, one adapter per sequence, several adapters in one batch) within 1e-4 of
// PeftModel's; merged outputs too, and merge then unmerge restores the weights within 1e-6; bad
// adapters -> one line; `tessera classify --lora` on 1 and 2 ranks against PEFT's logits, and
// `tessera embed --lora` against PEFT's token states mean-pooled, and `classify --lora NAME=PATH`
// with inputs of three adapters and the base in one batch.
#include <gtest/gtest.h>
#include <torch/types.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "runtime/models/encoder_lora.h"
#include "runtime/models/encoder_model.h"
#include "runtime/models/model_folder.h"
#include "runtime/models/safetensors.h"
#include "runtime/models/weights.h"
#include "tests/support/subprocess.h"

namespace tessera::models {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

struct Fixture {
  std::string dir;
  json manifest;
};

// Made once per test binary run; empty dir = skipped.
const Fixture& fixture(std::string* skip) {
  static Fixture f;
  static std::string why;
  static bool made = false;
  if (!made) {
    made = true;
    const std::string py = env("TESSERA_VENV_PYTHON");
    if (py.empty() || ::access(py.c_str(), X_OK) != 0) {
      why = "no test venv python (TESSERA_VENV_PYTHON='" + py + "')";
    } else {
      char tmpl[] = "/tmp/tessera_encoder_lora_XXXXXX";
      if (mkdtemp(tmpl) == nullptr) throw std::runtime_error("mkdtemp failed");
      f.dir = tmpl;
      std::atexit([] { fs::remove_all(f.dir); });
      const std::string cmd = "HF_HUB_OFFLINE=1 '" + py + "' '" + env("TESSERA_SOURCE_DIR") +
                              "/tests/runtime/models/encoder_lora_checkpoints.py' '" + f.dir +
                              "' > '" + f.dir + "/log.txt' 2>&1";
      if (std::system(cmd.c_str()) != 0) {
        std::ifstream log(f.dir + "/log.txt");
        std::stringstream ss;
        ss << log.rdbuf();
        throw std::runtime_error("encoder_lora_checkpoints.py failed: " + ss.str());
      }
      std::ifstream in(f.dir + "/manifest.json");
      f.manifest = json::parse(in);
    }
  }
  *skip = why;
  return f;
}

#define ENCODER_LORA_FIXTURE(f)      \
  std::string skip;                  \
  const Fixture& f = fixture(&skip); \
  if (!skip.empty()) GTEST_SKIP() << skip;

struct Loaded {
  EncoderConfig config;
  std::unique_ptr<EncoderModel> model;
};

Loaded load(const std::string& dir) {
  Loaded l;
  auto folder = ModelFolder::open(dir);
  l.config = EncoderConfig::from_file(folder.config_json());
  WeightLoader w(folder);
  l.model = std::make_unique<EncoderModel>(l.config, w, nullptr);
  return l;
}

EncoderBatch batch_of(const Fixture& f, const std::vector<int32_t>& lora_ids = {}) {
  std::vector<std::vector<int32_t>> ids, types;
  for (const auto& x : f.manifest["inputs"]) {
    ids.push_back(x["ids"].get<std::vector<int32_t>>());
    types.push_back(x["types"].get<std::vector<int32_t>>());
  }
  auto b = EncoderBatch::pack(ids, types);
  if (!lora_ids.empty()) b.lora_ids = torch::tensor(lora_ids, torch::kInt);
  return b;
}

torch::Tensor read_tensor(const std::string& path, const std::string& name) {
  const auto file = SafetensorsFile::open(path);
  const auto& e = file->get(name);
  return torch::from_blob(const_cast<uint8_t*>(e.data), e.shape, torch::kFloat).clone();
}

// The model's output for the batch: classifier logits, or token states without a head.
torch::Tensor outputs(const Loaded& l, const EncoderBatch& b) {
  auto states = l.model->forward(b);
  return l.config.has_classifier ? l.model->classify(states, b) : states;
}

// PEFT's reference for an adapter (logits [B, labels] or states [T, hidden]).
torch::Tensor reference(const Fixture& f, const std::string& adapter, bool classifier) {
  return read_tensor(f.dir + "/" + adapter + "/reference.safetensors",
                     classifier ? "logits" : "states");
}

// The adapters of `base`, in manifest order.
std::vector<std::string> adapters_of(const Fixture& f, const std::string& base) {
  std::vector<std::string> out;
  for (const auto& a : f.manifest["adapters"]) {
    if (a["base"] == base) out.push_back(a["name"]);
  }
  return out;
}

TEST(EncoderLora, UnmergedOutputsMatchPeft) {
  torch::NoGradGuard g;
  ENCODER_LORA_FIXTURE(f);
  const int64_t n = static_cast<int64_t>(f.manifest["inputs"].size());
  for (const std::string base : {"bert_cls", "bert_plain"}) {
    Loaded l = load(f.dir + "/" + base);
    const auto names = adapters_of(f, base);
    ASSERT_FALSE(names.empty());
    for (const auto& name : names) {
      l.model->add_lora(EncoderLoraAdapter::load(name, f.dir + "/" + name, l.config));
    }
    const bool cls = l.config.has_classifier;
    const auto base_out = outputs(l, batch_of(f));
    std::vector<torch::Tensor> refs;
    for (size_t i = 0; i < names.size(); ++i) {
      refs.push_back(reference(f, names[i], cls));
      const auto got = outputs(l, batch_of(f, std::vector<int32_t>(n, static_cast<int32_t>(i))));
      const double err = (got - refs[i]).abs().max().item<double>();
      const double gap = (base_out - refs[i]).abs().max().item<double>();
      std::printf("[ figures  ] %-13s max |%s - PEFT| %.2e (base model differs by %.2e)\n",
                  names[i].c_str(), cls ? "logit" : "state", err, gap);
      EXPECT_LE(err, 1e-4) << names[i];
      EXPECT_GT(gap, 1e-2) << names[i] << ": the adapter must change the outputs";
    }
    // One batch mixing every adapter and the base, sequence by sequence.
    std::vector<int32_t> ids(n);
    for (int64_t s = 0; s < n; ++s) {
      ids[s] = static_cast<int32_t>((s % (names.size() + 1))) - 1;
    }
    const auto mixed = outputs(l, batch_of(f, ids));
    const auto b = batch_of(f);
    const auto* cu = b.cu_seqlens.data_ptr<int32_t>();
    double worst = 0;
    for (int64_t s = 0; s < n; ++s) {
      const auto& want = ids[s] < 0 ? base_out : refs[ids[s]];
      const int64_t from = cls ? s : cu[s], len = cls ? 1 : cu[s + 1] - cu[s];
      worst = std::max(
          worst,
          (mixed.narrow(0, from, len) - want.narrow(0, from, len)).abs().max().item<double>());
    }
    std::printf("[ figures  ] %s: batch mixing %zu adapters and the base: max |diff| %.2e\n",
                base.c_str(), names.size(), worst);
    EXPECT_LE(worst, 1e-4) << base;
  }
}

TEST(EncoderLora, MergeThenUnmergeRestoresTheWeights) {
  torch::NoGradGuard g;
  ENCODER_LORA_FIXTURE(f);
  for (const std::string base : {"bert_cls", "bert_plain"}) {
    Loaded l = load(f.dir + "/" + base);
    std::map<std::string, torch::Tensor> before;
    for (const auto& [k, t] : l.model->lora_weights()) before[k] = t.clone();
    for (const auto& name : adapters_of(f, base)) {
      const int id =
          l.model->add_lora(EncoderLoraAdapter::load(name, f.dir + "/" + name, l.config));
      l.model->merge_lora(id);
      const double err = (outputs(l, batch_of(f)) - reference(f, name, l.config.has_classifier))
                             .abs()
                             .max()
                             .item<double>();
      EXPECT_LE(err, 1e-4) << name;
      double moved = 0;
      for (const auto& [k, t] : l.model->lora_weights()) {
        moved = std::max(moved, (t - before[k]).abs().max().item<double>());
      }
      EXPECT_GT(moved, 1e-3) << name;
      // Naming an adapter while one is merged is refused.
      const auto n = static_cast<int64_t>(f.manifest["inputs"].size());
      EXPECT_THROW(outputs(l, batch_of(f, std::vector<int32_t>(n, id))), Error);
      l.model->unmerge_lora(id);
      double left = 0;
      for (const auto& [k, t] : l.model->lora_weights()) {
        left = std::max(left, (t - before[k]).abs().max().item<double>());
      }
      std::printf(
          "[ figures  ] %-13s merged: max |output - PEFT| %.2e; merge moved weights by "
          "up to %.2e, unmerge left %.2e\n",
          name.c_str(), err, moved, left);
      EXPECT_LE(left, 1e-6) << name;
    }
    EXPECT_THROW(l.model->unmerge_lora(0), Error);
  }
}

TEST(EncoderLora, BadAdaptersGiveOneClearLine) {
  ENCODER_LORA_FIXTURE(f);
  const auto config = EncoderConfig::from_file(f.dir + "/bert_cls/config.json");
  const std::map<std::string, std::string> want = {
      {"bad_rank", "expected [4, 64] (r=4 in adapter_config.json"},
      {"bad_target", "target_modules entry 'foo' is not a linear layer of a bert encoder"},
      {"bad_missing", "layer.1.attention.self.value.lora_B.weight' is missing"},
      {"bad_decoder", "target_modules entry 'q_proj' is not a linear layer of a bert encoder"}};
  ASSERT_EQ(f.manifest["bad"].size(), want.size());
  for (const auto& j : f.manifest["bad"]) {
    const std::string name = j;
    try {
      EncoderLoraAdapter::load(name, f.dir + "/" + name, config);
      ADD_FAILURE() << name << " loaded";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(want.at(name)), std::string::npos) << msg;
      EXPECT_NE(msg.find(name), std::string::npos) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
  }
  // A BertForSequenceClassification adapter on a BertModel: its saved classifier has no place.
  const auto plain = EncoderConfig::from_file(f.dir + "/bert_plain/config.json");
  EXPECT_THROW(EncoderLoraAdapter::load("x", f.dir + "/cls_all", plain), Error);
  // Another family.
  EncoderConfig modern = config;
  modern.family = EncoderFamily::kModernBert;
  modern.model_type = "modernbert";
  try {
    EncoderLoraAdapter::load("x", f.dir + "/cls_all", modern);
    ADD_FAILURE() << "loaded for ModernBERT";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("implemented for BERT"), std::string::npos) << e.what();
  }
  // An adapter index the model does not hold.
  Loaded l = load(f.dir + "/bert_cls");
  l.model->add_lora(EncoderLoraAdapter::load("a", f.dir + "/cls_all", l.config));
  const int64_t n = static_cast<int64_t>(f.manifest["inputs"].size());
  EXPECT_THROW(outputs(l, batch_of(f, std::vector<int32_t>(n, 1))), Error);
  EXPECT_THROW(l.model->add_lora(EncoderLoraAdapter::load("a", f.dir + "/cls_all", l.config)),
               Error);
}

// `tessera classify --lora PATH`: the adapter merged on every rank gives PEFT's logits (1 and 2
// ranks, the adapter sliced like the layers), `tessera embed --lora PATH` PEFT's mean-pooled
// states; a bad adapter fails the command with one line.
TEST(EncoderLora, ClassifyAndEmbedCliMatchPeft) {
  ENCODER_LORA_FIXTURE(f);
  const std::string jsonl = f.dir + "/inputs.jsonl";
  {
    std::ofstream out(jsonl);
    for (const auto& x : f.manifest["inputs"]) {
      out << json({{"input_ids", x["ids"]}, {"token_type_ids", x["types"]}}).dump() << "\n";
    }
  }
  const std::string cmd = env("TESSERA_BIN") + " classify --model '" + f.dir +
                          "/bert_cls' --jsonl '" + jsonl + "' --json --lora '" + f.dir +
                          "/cls_all'";
  const auto want = reference(f, "cls_all", true);
  for (const std::string prefix : {std::string(), env("MPIEXEC") + " -np 2 --oversubscribe "}) {
    const auto r = testing::run_command(prefix + cmd, 120);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto j = json::parse(r.out.substr(r.out.find('{')));
    ASSERT_EQ(j["results"].size(), static_cast<size_t>(want.size(0)));
    EXPECT_EQ(j["lora"], f.dir + "/cls_all");
    double err = 0;
    for (size_t i = 0; i < j["results"].size(); ++i) {
      const auto got = torch::tensor(j["results"][i]["logits"].get<std::vector<float>>());
      err = std::max(err, (got - want[static_cast<int64_t>(i)]).abs().max().item<double>());
    }
    std::printf("[ figures  ] tessera classify --lora (%s): max |logit - PEFT| %.2e\n",
                prefix.empty() ? "1 rank" : "2 ranks", err);
    EXPECT_LE(err, 1e-4) << prefix;
  }
  // `tessera embed --lora`: a BertModel folder without sentence-transformers files pools by the
  // mean, unnormalised: PEFT's token states averaged per input.
  {
    const auto r = testing::run_command(env("TESSERA_BIN") + " embed --model '" + f.dir +
                                            "/bert_plain' --jsonl '" + jsonl + "' --json --lora '" +
                                            f.dir + "/plain_qv_out'",
                                        120);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto j = json::parse(r.out.substr(r.out.find('{')));
    const auto states = reference(f, "plain_qv_out", false);
    const auto b = batch_of(f);
    const auto* cu = b.cu_seqlens.data_ptr<int32_t>();
    ASSERT_EQ(j["embeddings"].size(), static_cast<size_t>(b.num_seqs()));
    double err = 0;
    for (int64_t s = 0; s < b.num_seqs(); ++s) {
      const auto want = states.narrow(0, cu[s], cu[s + 1] - cu[s]).mean(0);
      const auto got = torch::tensor(j["embeddings"][s].get<std::vector<float>>());
      err = std::max(err, (got - want).abs().max().item<double>());
    }
    std::printf("[ figures  ] tessera embed --lora: max |embedding - PEFT's mean state| %.2e\n",
                err);
    EXPECT_LE(err, 1e-4);
  }
  // --lora NAME=PATH adapters kept unmerged, chosen per input by a "lora" field: one batch mixes
  // three adapters and the base model through the segmented kernel (1 and 2 ranks).
  {
    const std::string mixed = f.dir + "/mixed.jsonl";
    const std::vector<std::string> names = {"", "cls_all", "cls_regex", "cls_rslora_qv"};
    std::vector<std::string> line_lora;
    {
      std::ofstream out(mixed);
      int64_t k = 0;
      for (const auto& x : f.manifest["inputs"]) {
        json line = {{"input_ids", x["ids"]}, {"token_type_ids", x["types"]}};
        line_lora.push_back(names[k++ % names.size()]);
        if (!line_lora.back().empty()) line["lora"] = line_lora.back();
        out << line.dump() << "\n";
      }
    }
    Loaded base = load(f.dir + "/bert_cls");
    const auto base_logits = outputs(base, batch_of(f));
    std::string named = env("TESSERA_BIN") + " classify --model '" + f.dir + "/bert_cls' --json";
    for (size_t i = 1; i < names.size(); ++i) {
      named += " --lora " + names[i] + "='" + f.dir + "/" + names[i] + "'";
    }
    for (const std::string prefix : {std::string(), env("MPIEXEC") + " -np 2 --oversubscribe "}) {
      const auto r = testing::run_command(prefix + named + " --jsonl '" + mixed + "'", 120);
      ASSERT_EQ(r.exit_code, 0) << r.err;
      const auto j = json::parse(r.out.substr(r.out.find('{')));
      ASSERT_EQ(j["results"].size(), line_lora.size());
      double err = 0;
      for (size_t i = 0; i < line_lora.size(); ++i) {
        const auto got = torch::tensor(j["results"][i]["logits"].get<std::vector<float>>());
        const auto row = static_cast<int64_t>(i);
        const auto ref =
            line_lora[i].empty() ? base_logits[row] : reference(f, line_lora[i], true)[row];
        err = std::max(err, (got - ref).abs().max().item<double>());
      }
      std::printf(
          "[ figures  ] tessera classify --lora NAME=PATH x3, mixed per input (%s): max "
          "|logit - PEFT| %.2e\n",
          prefix.empty() ? "1 rank" : "2 ranks", err);
      EXPECT_LE(err, 1e-4) << prefix;
    }
    // An input naming an adapter that is not loaded fails with one line.
    std::ofstream(mixed) << R"({"input_ids": [2, 5, 3], "lora": "nope"})"
                         << "\n";
    const auto r = testing::run_command(named + " --jsonl '" + mixed + "'", 120);
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find("lora='nope', which is not a loaded adapter"), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  const auto bad =
      testing::run_command(env("TESSERA_BIN") + " classify --model '" + f.dir +
                               "/bert_cls' --text hello --lora '" + f.dir + "/bad_target'",
                           120);
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("'foo' is not a linear layer"), std::string::npos) << bad.err;
  EXPECT_EQ(std::count(bad.err.begin(), bad.err.end(), '\n'), 1) << bad.err;
}

}  // namespace
}  // namespace tessera::models
