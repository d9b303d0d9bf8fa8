// `tessera embed` and `tessera classify`: sentence embeddings and sequence-classification outputs
// of an encoder folder (BERT / ModernBERT; sentence-transformers pooling and normalisation from its
// modules.json), on the EncoderService (runtime/engine/embedding_client.h). Under mpirun the model
// is split tensor-parallel over all ranks; rank 0 reads the inputs and prints.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "common/error.h"
#include "launch/cli/cli_sizes.h"
#include "launch/cli/commands.h"
#include "runtime/engine/embedding_client.h"
#include "sharding/communicator.h"

namespace tessera::cli {

namespace {

using nlohmann::json;

struct EncodeArgs {
  engine::EncoderOptions options;
  std::vector<std::string> texts;
  std::string jsonl;
  std::string prompt, prompt_name;
  std::string load_memory_budget;
  std::vector<std::string> loras;  // --lora values: PATH (merged) or NAME=PATH (per input)
  std::string use_lora;
  bool json = false;
  bool no_progress = false;
};

struct Inputs {
  std::vector<engine::EncoderInput> inputs;
  std::vector<std::vector<double>> labels;  // classify: one entry per input when given
  bool integer_labels = true;
};

std::vector<int32_t> id_list(const json& v, const std::string& where, const char* field) {
  TESSERA_CHECK(v.is_array(), where, ": '", field, "' must be a list of integers");
  std::vector<int32_t> out;
  for (const auto& x : v) {
    TESSERA_CHECK(x.is_number_integer() && x.get<int64_t>() >= 0 && x.get<int64_t>() <= INT32_MAX,
                  where, ": '", field, "' must hold non-negative integers, got ", x.dump());
    out.push_back(static_cast<int32_t>(x.get<int64_t>()));
  }
  return out;
}

// --text values and --jsonl lines: a JSON string, or {"text": ...} / {"input_ids": [...],
// "token_type_ids": [...]}, optionally with "label" (a class id or a value) or "labels" (a list).
Inputs read_inputs(const EncodeArgs& a, engine::EncoderService& svc, bool classify) {
  Inputs in;
  const std::string prompt =
      classify ? "" : (a.prompt.empty() ? svc.prompt(a.prompt_name) : a.prompt);
  TESSERA_CHECK(classify || a.prompt.empty() || a.prompt_name.empty(),
                "give --prompt or --prompt-name, not both");
  for (const auto& t : a.texts) {
    in.inputs.push_back(svc.tokenize(t, prompt));
    in.inputs.back().lora = a.use_lora;
  }
  if (!a.jsonl.empty()) {
    std::ifstream f(a.jsonl);
    TESSERA_CHECK(f.good(), "cannot read --jsonl file '", a.jsonl, "'");
    std::string line;
    int64_t n = 0;
    bool any_label = false, all_labels = true;
    while (std::getline(f, line)) {
      ++n;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string where = a.jsonl + ":" + std::to_string(n);
      json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
      TESSERA_CHECK(!j.is_discarded(), where, ": not valid JSON");
      if (j.is_string()) {
        in.inputs.push_back(svc.tokenize(j.get<std::string>(), prompt));
        in.inputs.back().lora = a.use_lora;
        all_labels = false;
        continue;
      }
      TESSERA_CHECK(j.is_object(), where, ": a line must be a string or an object");
      engine::EncoderInput e;
      if (j.contains("text")) {
        TESSERA_CHECK(j["text"].is_string(), where, ": 'text' must be a string");
        e = svc.tokenize(j["text"].get<std::string>(), prompt);
      } else if (j.contains("input_ids")) {
        e.ids = id_list(j["input_ids"], where, "input_ids");
        if (j.contains("token_type_ids")) {
          e.token_types = id_list(j["token_type_ids"], where, "token_type_ids");
        }
      } else {
        TESSERA_FAIL(where, ": an object needs 'text' or 'input_ids'");
      }
      e.lora = a.use_lora;
      if (j.contains("lora")) {
        TESSERA_CHECK(j["lora"].is_string(), where, ": 'lora' must be an adapter name");
        e.lora = j["lora"].get<std::string>();
      }
      in.inputs.push_back(std::move(e));
      const bool has = j.contains("label") || j.contains("labels");
      any_label = any_label || has;
      all_labels = all_labels && has;
      if (!has) continue;
      TESSERA_CHECK(classify, where, ": labels are for `tessera classify`");
      std::vector<double> values;
      bool integer = true;
      if (j.contains("label")) {
        TESSERA_CHECK(j["label"].is_number(), where, ": 'label' must be a number");
        values.push_back(j["label"].get<double>());
        integer = j["label"].is_number_integer();
      } else {
        TESSERA_CHECK(j["labels"].is_array(), where, ": 'labels' must be a list of numbers");
        for (const auto& x : j["labels"]) {
          TESSERA_CHECK(x.is_number(), where, ": 'labels' must be a list of numbers");
          values.push_back(x.get<double>());
        }
        integer = false;
      }
      TESSERA_CHECK(in.labels.empty() || integer == in.integer_labels, where,
                    ": labels mix class ids and values");
      in.integer_labels = integer;
      in.labels.push_back(std::move(values));
    }
    TESSERA_CHECK(!any_label || (all_labels && a.texts.empty()), a.jsonl,
                  ": either every input has a label or none has");
  }
  TESSERA_CHECK(!in.inputs.empty(), "no inputs: give --text or --jsonl");
  return in;
}

std::string floats(const std::vector<float>& v) {
  std::string out;
  char buf[32];
  for (size_t i = 0; i < v.size(); ++i) {
    std::snprintf(buf, sizeof(buf), "%s%.7g", i ? " " : "", v[i]);
    out += buf;
  }
  return out;
}

void add_common(CLI::App* app, EncodeArgs& a) {
  app->add_option("--model", a.options.model,
                  "A Hugging Face or sentence-transformers model folder (BERT, ModernBERT)")
      ->required();
  app->add_option("--text", a.texts, "Input text (repeatable)");
  app->add_option("--jsonl", a.jsonl,
                  "JSONL file, one input per line: a string, {\"text\": ...} or "
                  "{\"input_ids\": [...], \"token_type_ids\": [...]}");
  app->add_option("--attention", a.options.attention,
                  "dense or cluster (default: the config's tessera_attention, else dense)")
      ->check(CLI::IsMember({"dense", "cluster"}));
  app->add_option("--lora", a.loras,
                  "A PEFT LoRA adapter (BERT; target_modules query / key / value / dense, "
                  "modules_to_save classifier / pooler): PATH, merged into the weights for every "
                  "input, or NAME=PATH (repeatable), kept unmerged and chosen per input with "
                  "--use-lora or a \"lora\" field in --jsonl lines");
  app->add_option("--use-lora", a.use_lora,
                  "The NAME=PATH adapter of inputs that do not name one (default: none)");
  // Counts >= 1 (0 and negatives were taken as "the config's" without a word).
  const auto positive = CLI::Range(int64_t{1}, std::numeric_limits<int64_t>::max());
  app->add_option("--cluster-size", a.options.cluster_size,
                  "Tokens per cluster (cluster attention; default: the config's)")
      ->check(positive);
  app->add_option("--nearest-clusters", a.options.nearest_clusters,
                  "Clusters each token attends to (cluster attention; default: the config's)")
      ->check(positive);
  app->add_option("--max-batch-tokens", a.options.max_batch_tokens, "Tokens per packed forward")
      ->capture_default_str()
      ->check(positive);
  app->add_option("--load-memory-budget", a.load_memory_budget,
                  "Bytes of checkpoint data resident while loading (K/M/G; default unbounded)");
  app->add_flag("--json", a.json, "Print one JSON object");
  app->add_flag("--no-progress", a.no_progress, "No loading progress bar on a terminal");
}

// Loads the service on every rank, runs `body` on the leader while the others follow, and agrees
// on the outcome: a bad input fails every rank together with one line.
int run_encoder(const EncodeArgs& a0, launch::World& world,
                const std::function<void(engine::EncoderService&)>& body) {
  EncodeArgs a = a0;
  try {
    if (!a.load_memory_budget.empty()) {
      a.options.load_memory_budget = parse_size("--load-memory-budget", a.load_memory_budget);
    }
    // --lora NAME=PATH (a name: no '/') is kept unmerged; --lora PATH is merged.
    for (const auto& v : a.loras) {
      const auto eq = v.find('=');
      if (eq != std::string::npos && eq > 0 && v.substr(0, eq).find('/') == std::string::npos) {
        TESSERA_CHECK(eq + 1 < v.size(), "--lora NAME=PATH needs a PATH, got '", v, "'");
        a.options.loras.emplace_back(v.substr(0, eq), v.substr(eq + 1));
      } else {
        TESSERA_CHECK(a.options.lora.empty(), "--lora PATH (merged) is given twice: '",
                      a.options.lora, "' and '", v, "'");
        a.options.lora = v;
      }
    }
    TESSERA_CHECK(
        a.use_lora.empty() || std::any_of(a.options.loras.begin(), a.options.loras.end(),
                                          [&](const auto& l) { return l.first == a.use_lora; }),
        "--use-lora '", a.use_lora, "' is not the NAME of a --lora NAME=PATH adapter");
  } catch (const Error& e) {
    throw CollectiveError(e.message(), __FILE__, __LINE__);
  }
  a.options.device = world.device;
  a.options.load_progress = !a.json && !a.no_progress && isatty(STDERR_FILENO);
  sharding::Communicator* control = world.comm.get();
  sharding::Communicator* tp = world.device_comm ? world.device_comm.get() : control;
  engine::EncoderService svc(a.options, tp, control);
  std::string err;
  if (svc.leader()) {
    try {
      body(svc);
    } catch (const Error& e) {
      err = e.message();
    }
    svc.stop();
  } else {
    svc.serve();
  }
  if (control != nullptr && control->size() > 1) err = control->agree_on_error(err);
  if (!err.empty()) throw CollectiveError(err, __FILE__, __LINE__);
  return 0;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

std::vector<Command> register_embed(CLI::App& root) {
  std::vector<Command> out;
  {
    auto a = std::make_shared<EncodeArgs>();
    auto* app = root.add_subcommand(
        "embed",
        "Sentence embeddings of an encoder folder, pooled and normalised as its "
        "sentence-transformers modules say; under mpirun the model is split tensor-parallel");
    add_common(app, *a);
    app->add_option("--prompt", a->prompt, "Text prepended to every input (sentence-transformers)");
    app->add_option("--prompt-name", a->prompt_name,
                    "A prompt of config_sentence_transformers.json (default: its "
                    "default_prompt_name)");
    Action action = [a](launch::World& world) -> int {
      return run_encoder(*a, world, [&](engine::EncoderService& svc) {
        const auto t0 = std::chrono::steady_clock::now();
        Inputs in = read_inputs(*a, svc, /*classify=*/false);
        int64_t tokens = 0;
        for (const auto& e : in.inputs) tokens += static_cast<int64_t>(e.ids.size());
        const auto vectors = svc.run(engine::EncoderTask::kEmbed, std::move(in.inputs));
        const double secs = seconds_since(t0);
        const auto& info = svc.info();
        if (a->json) {
          json j = {{"model", info.model_dir},
                    {"model_type", info.model_type},
                    {"dimensions", info.dimensions},
                    {"pooling", info.pooling},
                    {"normalize", info.normalize},
                    {"attention", info.attention},
                    {"lora", info.lora},
                    {"tp", info.tp_size},
                    {"inputs", vectors.size()},
                    {"tokens", tokens},
                    {"seconds", secs},
                    {"embeddings", vectors}};
          std::printf("%s\n", j.dump().c_str());
        } else {
          for (const auto& v : vectors) std::printf("%s\n", floats(v).c_str());
          std::fprintf(stderr,
                       "embedded %zu inputs (%lld tokens) in %.3f s: %lld dims, %s pooling%s, "
                       "%d rank(s)\n",
                       vectors.size(), static_cast<long long>(tokens), secs,
                       static_cast<long long>(info.dimensions), info.pooling.c_str(),
                       info.normalize ? ", normalised" : "", info.tp_size);
        }
      });
    };
    out.push_back({app, action, true});
  }
  {
    auto a = std::make_shared<EncodeArgs>();
    auto* app = root.add_subcommand(
        "classify",
        "Sequence-classification outputs of a *ForSequenceClassification encoder folder: logits, "
        "scores (softmax / sigmoid) and, for labelled --jsonl inputs, the loss");
    add_common(app, *a);
    Action action = [a](launch::World& world) -> int {
      return run_encoder(*a, world, [&](engine::EncoderService& svc) {
        const auto& info = svc.info();
        TESSERA_CHECK(info.has_classifier, "model '", info.model_dir, "' (architectures ",
                      info.architecture, ") has no sequence-classification head");
        Inputs in = read_inputs(*a, svc, /*classify=*/true);
        const auto logits = svc.run(engine::EncoderTask::kClassify, std::move(in.inputs));
        std::optional<double> loss;
        if (!in.labels.empty()) loss = svc.classifier_loss(logits, in.labels, in.integer_labels);
        json results = json::array();
        for (const auto& l : logits) {
          const std::vector<double> scores = engine::classifier_scores(l, info.score_function);
          const size_t top = std::max_element(scores.begin(), scores.end()) - scores.begin();
          results.push_back({{"label", info.labels[top]},
                             {"score", scores[top]},
                             {"scores", scores},
                             {"logits", l}});
        }
        if (a->json) {
          json j = {{"model", info.model_dir},
                    {"labels", info.labels},
                    {"score_function", info.score_function},
                    {"problem_type", info.problem_type},
                    {"lora", info.lora},
                    {"results", results}};
          if (loss) j["loss"] = *loss;
          std::printf("%s\n", j.dump().c_str());
        } else {
          for (const auto& r : results) {
            std::printf("%s\t%.6f\tlogits %s\n", r["label"].get<std::string>().c_str(),
                        r["score"].get<double>(),
                        floats(r["logits"].get<std::vector<float>>()).c_str());
          }
          if (loss) std::printf("loss\t%.6f\n", *loss);
        }
      });
    };
    out.push_back({app, action, true});
  }
  return out;
}

}  // namespace tessera::cli
