// `tessera classify` / `tessera embed` end to end: texts through the folder's tokenizer.json into
// a BERT classifier made by transformers, logits against transformers' own (one process and two
// ranks under mpirun), the loss of labelled --jsonl inputs, and bad checkpoints / inputs failing
// with exactly one line on stderr and a non-zero exit, under one or two ranks.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "runtime/models/safetensors.h"
#include "tests/runtime/models/encoder_reference.h"
#include "tests/support/subprocess.h"

namespace tessera::models {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

json manifest_or_skip(std::string* skip) {
  *skip = testing::encoder_reference_skip();
  if (!skip->empty()) return {};
  return testing::read_manifest(testing::ensure_encoder_reference());
}

const json& model_named(const json& m, const std::string& name) {
  for (const auto& e : m) {
    if (e["name"] == name) return e;
  }
  throw std::runtime_error("no model " + name);
}

std::string bin() { return testing::env("TESSERA_BIN"); }
std::string mpi(int np) {
  return testing::env("MPIEXEC") + " -np " + std::to_string(np) + " --oversubscribe ";
}

int count(const std::string& s, const std::string& what) {
  int n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

int lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

TEST(EncoderCli, ClassifyTextsMatchesTransformers) {
  std::string skip;
  const json m = manifest_or_skip(&skip);
  if (!skip.empty()) GTEST_SKIP() << skip;
  const json& bert = model_named(m, "bert_single");
  std::string args;
  for (const auto& t : bert["texts"]) args += " --text '" + t.get<std::string>() + "'";
  for (int np : {1, 2}) {
    const auto r =
        ::tessera::testing::run_command((np > 1 ? mpi(np) : "") + bin() + " classify --model " +
                                            bert["dir"].get<std::string>() + args + " --json",
                                        120);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto j = json::parse(r.out);
    EXPECT_EQ(j["score_function"], "softmax");
    double worst = 0;
    for (size_t i = 0; i < bert["texts"].size(); ++i) {
      const auto& got = j["results"][i]["logits"];
      const auto& want = bert["text_logits"][i];
      double sum = 0;
      for (size_t k = 0; k < want.size(); ++k) {
        worst = std::max(worst, std::fabs(got[k].get<double>() - want[k].get<double>()));
        sum += j["results"][i]["scores"][k].get<double>();
      }
      EXPECT_NEAR(sum, 1.0, 1e-6);
    }
    EXPECT_LT(worst, 1e-4) << np << " ranks";
    std::printf("[ figures  ] classify CLI, %d rank(s): max |logit - transformers| %.2e\n", np,
                worst);
  }
}

TEST(EncoderCli, LabelledJsonlGivesTheLossOfTransformers) {
  std::string skip;
  const json m = manifest_or_skip(&skip);
  if (!skip.empty()) GTEST_SKIP() << skip;
  for (const char* name : {"bert_single", "bert_multilabel", "modernbert_mean_regression"}) {
    SCOPED_TRACE(name);
    const json& e = model_named(m, name);
    const std::string path =
        fs::temp_directory_path() / (std::string("tessera_cls_") + name + ".jsonl");
    {
      std::ofstream out(path);
      for (size_t i = 0; i < e["inputs"].size(); ++i) {
        json line = {{"input_ids", e["inputs"][i]["ids"]},
                     {"token_type_ids", e["inputs"][i]["types"]}};
        line[e["labels"][i].is_array() ? "labels" : "label"] = e["labels"][i];
        out << line.dump() << "\n";
      }
    }
    const auto r =
        ::tessera::testing::run_command(bin() + " classify --model " + e["dir"].get<std::string>() +
                                            " --jsonl " + path + " --json --max-batch-tokens 64",
                                        120);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto j = json::parse(r.out);
    EXPECT_NEAR(j["loss"].get<double>(), e["loss"].get<double>(), 1e-4);
    fs::remove(path);
  }
}

// A copy of bert_single with `edit` applied to its safetensors / config.
std::string broken(const std::string& good, const std::string& tag,
                   const std::function<void(std::vector<TensorToWrite>&, json&)>& edit) {
  const std::string out = fs::temp_directory_path() / ("tessera_bad_cli_" + tag);
  fs::remove_all(out);
  fs::create_directories(out);
  for (const auto& f : fs::directory_iterator(good)) {
    if (f.path().filename() != "model.safetensors" && f.path().filename() != "config.json") {
      fs::copy_file(f.path(), out + "/" + f.path().filename().string());
    }
  }
  auto st = SafetensorsFile::open(good + "/model.safetensors");
  std::vector<TensorToWrite> tensors;
  for (const auto& n : st->names()) {
    const auto& e = st->get(n);
    tensors.push_back({n, e.dtype, e.shape, std::vector<uint8_t>(e.data, e.data + e.nbytes)});
  }
  std::ifstream in(good + "/config.json");
  json config = json::parse(in);
  edit(tensors, config);
  write_safetensors(out + "/model.safetensors", tensors);
  std::ofstream(out + "/config.json") << config.dump();
  return out;
}

TEST(EncoderCli, BadCheckpointsAndInputsFailWithOneLine) {
  std::string skip;
  const json m = manifest_or_skip(&skip);
  if (!skip.empty()) GTEST_SKIP() << skip;
  const std::string good = model_named(m, "bert_single")["dir"];
  struct Case {
    std::string tag, dir, command, expect;
  };
  const auto missing = broken(good, "missing", [](auto& t, auto&) {
    std::erase_if(t, [](const TensorToWrite& x) { return x.name == "classifier.bias"; });
  });
  const auto shape = broken(good, "shape", [](auto& t, auto&) {
    for (auto& x : t) {
      if (x.name == "bert.embeddings.word_embeddings.weight") x.shape = {100, 128};
    }
  });
  const auto arch = broken(good, "arch", [](auto&, json& c) { c["model_type"] = "t5"; });
  const auto headless =
      broken(good, "headless", [](auto&, json& c) { c["architectures"] = {"BertModel"}; });
  const std::string mb = model_named(m, "modernbert_cls")["dir"];
  const std::string bad_ids = fs::temp_directory_path() / "tessera_bad_ids.jsonl";
  std::ofstream(bad_ids) << "{\"input_ids\": [2, 5000]}\n";
  const std::vector<Case> cases = {
      {"missing tensor", missing, "classify --text hi",
       "checkpoint has no tensor 'classifier.bias'"},
      {"shape", shape, "classify --text hi",
       "tensor 'bert.embeddings.word_embeddings.weight' has shape [100, 128] but the config "
       "implies [200, 64]"},
      {"architecture", arch, "embed --text hi",
       "model_type='t5' is not an encoder Tessera runs (bert, modernbert)"},
      {"no head", headless, "classify --text hi", "has no sequence-classification head"},
      {"no tokenizer", mb, "embed --text hi", "has no tokenizer.json: texts cannot be encoded"},
      {"token id", good, "embed --jsonl " + bad_ids,
       "input 0 has token id 5000, outside the vocabulary [0, 200)"},
      // Counts below 1 were taken as "the config's" without a word.
      {"cluster size", good, "embed --text hi --attention cluster --cluster-size 0",
       "--cluster-size: Value 0 not in range 1"},
      {"nearest clusters", good, "classify --text hi --nearest-clusters -2",
       "--nearest-clusters: Value -2 not in range 1"},
  };
  // Every case on one process; under two ranks a load error and a leader-only input error
  // (each run pays ~2.5 s of process start-up, so the matrix stays small).
  for (int np : {1, 2}) {
    for (const auto& c : cases) {
      if (np == 2 && c.tag != "missing tensor" && c.tag != "token id") continue;
      SCOPED_TRACE(c.tag + ", " + std::to_string(np) + " rank(s)");
      const std::string verb = c.command.substr(0, c.command.find(' '));
      const std::string rest = c.command.substr(c.command.find(' '));
      const auto r = ::tessera::testing::run_command(
          (np > 1 ? mpi(np) : "") + bin() + " " + verb + " --model " + c.dir + rest, 120);
      EXPECT_NE(r.exit_code, 0);
      EXPECT_NE(r.err.find(c.expect), std::string::npos) << r.err;
      // One line from the job (mpiexec adds its own report of the exit code under np > 1).
      EXPECT_EQ(count(r.err, "tessera: error"), 1) << r.err;
      EXPECT_EQ(count(r.err, "rank 1"), 0) << r.err;
      if (np == 1) EXPECT_EQ(lines(r.err), 1) << r.err;
    }
  }
}

}  // namespace
}  // namespace tessera::models
