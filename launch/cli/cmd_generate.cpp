// `tessera generate`: offline generation on the engine (continuous batching over the paged KV
// cache), the model split tensor-parallel (--tp) and replicated (--dp) over the job's ranks.
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <sstream>

#include "common/error.h"
#include "launch/cli/cli_sizes.h"
#include "launch/cli/commands.h"
#include "runtime/engine/generate.h"
#include "runtime/models/lora_adapter.h"

namespace tessera::cli {

namespace {

struct GenerateArgs {
  engine::GenerateJob job;
  std::vector<std::string> prompts;
  std::vector<std::string> prompt_ids;
  std::string prompts_file;
  scheduler::SamplingParams params;
  int64_t seed = -1;
  std::string stop_token_ids;
  std::string kv_cache_memory;
  std::string load_memory_budget;
  std::vector<std::string> loras;
  std::string use_lora;
  std::string kv_cache_dtype = "float32";
  bool no_prefix_caching = false;
  bool json = false;
  bool no_progress = false;
};

std::string join(const std::vector<int32_t>& ids) {
  std::ostringstream os;
  for (size_t i = 0; i < ids.size(); ++i) os << (i ? " " : "") << ids[i];
  return os.str();
}

// Decoded text for a terminal: UTF-8 as is, control bytes other than newline and tab as \xNN
// (random model output never breaks a terminal).
std::string printable(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if ((c < 0x20 && c != '\n' && c != '\t') || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

class ProgressBar {
 public:
  explicit ProgressBar(bool enabled) : enabled_(enabled) {}
  void update(const engine::Progress& p) {
    if (!enabled_ || p.total == 0) return;
    constexpr int kWidth = 30;
    const int done = static_cast<int>(kWidth * p.finished / p.total);
    std::string bar(done, '#');
    bar.resize(kWidth, '.');
    std::fprintf(stderr, "\r[%s] %lld/%lld requests, %lld tokens, %.0f tok/s ", bar.c_str(),
                 static_cast<long long>(p.finished), static_cast<long long>(p.total),
                 static_cast<long long>(p.output_tokens),
                 p.seconds > 0 ? p.output_tokens / p.seconds : 0.0);
    std::fflush(stderr);
    shown_ = true;
  }
  void finish() {
    if (shown_) std::fprintf(stderr, "\r\033[K");
  }

 private:
  bool enabled_;
  bool shown_ = false;
};

// The sparse decode option and what it read (the leader rank of each replica: its KV heads).
nlohmann::json sparse_json(const models::SparseDecodeConfig& c,
                           const models::SparseDecodeStats& s) {
  if (!c.enabled()) return nullptr;
  return {{"method", c.method},
          {"budget", c.budget},
          {"sinks", c.sinks},
          {"window", c.window},
          {"min_context", c.threshold()},
          {"rows", s.rows},
          {"tokens_read", s.tokens_read},
          {"tokens_context", s.tokens_context},
          {"kv_bytes_read", s.kv_bytes_read},
          {"kv_bytes_dense", s.kv_bytes_dense},
          {"kv_read_fraction",
           s.kv_bytes_dense > 0 ? static_cast<double>(s.kv_bytes_read) / s.kv_bytes_dense : 0.0}};
}

}  // namespace

Command register_generate(CLI::App& root) {
  auto args = std::make_shared<GenerateArgs>();
  auto& job = args->job;
  auto& p = args->params;
  p.temperature = 0.0f;  // greedy unless asked otherwise
  p.max_tokens = 32;
  auto* app = root.add_subcommand(
      "generate",
      "Generate from prompts with continuous batching; under mpirun the model is split "
      "tensor-parallel (--tp) and replicated (--dp)");
  app->add_option("--model", job.engine.model,
                  "Built-in model name (tiny) or a Hugging Face model folder")
      ->capture_default_str();
  app->add_option("--prompt", args->prompts, "Prompt text (repeatable)");
  app->add_option("--prompt-ids", args->prompt_ids, "Prompt as token ids, e.g. 1,2,3 (repeatable)");
  app->add_option("--prompts", args->prompts_file,
                  "JSONL file, one request per line: {\"prompt\": text or ids, ...sampling "
                  "fields}");
  app->add_option("--max-tokens", p.max_tokens, "Tokens to generate per request (>= 1)")
      ->capture_default_str();
  app->add_option("--min-tokens", p.min_tokens, "No stop before this many tokens");
  app->add_option("--temperature", p.temperature, "0 = greedy")->capture_default_str();
  app->add_option("--top-k", p.top_k, "Keep the k most likely tokens (0 = off)");
  app->add_option("--top-p", p.top_p, "Nucleus mass in (0, 1]");
  app->add_option("--min-p", p.min_p, "Drop tokens below min_p x the top probability");
  app->add_option("--repetition-penalty", p.repetition_penalty, "Hugging Face semantics (1 = off)");
  app->add_option("--presence-penalty", p.presence_penalty, "OpenAI semantics (0 = off)");
  app->add_option("--frequency-penalty", p.frequency_penalty, "OpenAI semantics (0 = off)");
  app->add_option("--seed", args->seed, "Per-request seed (-1 = none)");
  app->add_option("--stop", p.stop, "Stop string (repeatable)");
  app->add_option("--stop-token-ids", args->stop_token_ids, "Stop token ids, e.g. 2,7");
  app->add_flag("--ignore-eos", p.ignore_eos, "Keep generating past end-of-sequence tokens");
  app->add_option("--logprobs", p.logprobs, "Top-n log-probabilities per token (-1 = none)");
  app->add_option("--tp", job.tp, "Ranks per tensor-parallel group (default: all / --dp)");
  app->add_option("--dp", job.dp, "Data-parallel replicas")->capture_default_str();
  app->add_option("--max-num-seqs", job.engine.max_num_seqs, "Most sequences per step")
      ->capture_default_str();
  app->add_option("--max-num-batched-tokens", job.engine.max_num_batched_tokens,
                  "Most tokens per step (longer prompts are prefilled in chunks)")
      ->capture_default_str();
  app->add_option("--max-model-len", job.engine.max_model_len,
                  "Longest prompt + output (default: the model's max_position_embeddings)");
  app->add_option("--kv-cache-memory", args->kv_cache_memory,
                  "KV cache bytes per rank (K/M/G suffixes; default: what --max-num-seqs "
                  "sequences need, at most 1 GiB on a CPU)");
  app->add_option("--kv-cache-fraction", job.engine.device_memory_fraction,
                  "On a GPU without --kv-cache-memory: this fraction of its free memory")
      ->capture_default_str();
  app->add_option("--kv-cache-dtype", args->kv_cache_dtype,
                  "KV cache pages: float32, bfloat16 or float16")
      ->capture_default_str();
  app->add_option("--block-size", job.engine.block_size, "KV cache tokens per block per rank")
      ->capture_default_str();
  app->add_option("--load-memory-budget", args->load_memory_budget,
                  "Checkpoint bytes resident at once while loading weights (K/M/G; default "
                  "unbounded)");
  app->add_option("--lora", args->loras,
                  "LoRA adapter NAME=PATH (a PEFT folder; repeatable); prompts name it with "
                  "--use-lora or a \"lora\" field in --prompts lines");
  app->add_option("--quantization", job.engine.quantization,
                  "Weights: none (float32) or int8 (per output channel, computed from int8)")
      ->capture_default_str();
  app->add_option("--use-lora", args->use_lora,
                  "Adapter for the --prompt / --prompt-ids prompts (default: the base model)");
  app->add_flag("--no-prefix-caching", args->no_prefix_caching, "Recompute shared prefixes");
  auto& sp = job.engine.sparse;
  app->add_option("--sparse-decode", sp.method,
                  "Sparse decode of long sequences on full-attention layers: cluster, quest, "
                  "meanstd or sink_window (default: off, dense decode)");
  app->add_option("--sparse-budget", sp.budget,
                  "Sparse decode: tokens attended per sequence and KV head (sinks and window "
                  "included)");
  app->add_option("--sparse-sinks", sp.sinks, "Sparse decode: first tokens always attended")
      ->capture_default_str();
  app->add_option("--sparse-window", sp.window, "Sparse decode: recent tokens always attended")
      ->capture_default_str();
  app->add_option("--sparse-min-context", sp.min_context,
                  "Sparse decode: only sequences holding more tokens than this (-1 = the budget)")
      ->capture_default_str();
  app->add_flag("--json", args->json, "Print one JSON object instead of text");
  app->add_flag("--no-progress", args->no_progress, "No progress bar on a terminal");

  Action action = [args](launch::World& world) -> int {
    auto& job = args->job;
    // Same arguments on every rank: a bad one fails every rank together (one line from rank 0).
    try {
      if (args->seed >= 0) args->params.seed = static_cast<uint64_t>(args->seed);
      if (!args->stop_token_ids.empty()) {
        args->params.stop_token_ids =
            engine::parse_id_list(args->stop_token_ids, "--stop-token-ids");
      }
      args->params.validate();
      if (!args->kv_cache_memory.empty()) {
        job.engine.kv_cache_memory = parse_size("--kv-cache-memory", args->kv_cache_memory);
      }
      if (!args->load_memory_budget.empty()) {
        job.engine.load_memory_budget =
            parse_size("--load-memory-budget", args->load_memory_budget);
      }
      job.engine.load_progress = !args->json && !args->no_progress && isatty(STDERR_FILENO);
      for (const auto& l : args->loras) job.engine.loras.push_back(models::parse_lora_arg(l));
      job.engine.enable_prefix_caching = !args->no_prefix_caching;
      const auto& kd = args->kv_cache_dtype;
      TESSERA_CHECK(kd == "float32" || kd == "bfloat16" || kd == "float16",
                    "--kv-cache-dtype must be float32, bfloat16 or float16, got '", kd, "'");
      job.engine.kv_cache_dtype =
          kd == "float32" ? DType::kF32 : (kd == "bfloat16" ? DType::kBF16 : DType::kF16);
      job.engine.device = world.device;
      if (!job.engine.sparse.enabled()) {
        TESSERA_CHECK(job.engine.sparse.budget == 0,
                      "--sparse-budget needs --sparse-decode cluster|quest|meanstd|sink_window");
      }
      job.engine.sparse.validate(job.engine.block_size);
      job.prompts.clear();
      for (const auto& text : args->prompts) {
        engine::PromptSpec s;
        s.text = text;
        s.params = args->params;
        s.lora = args->use_lora;
        job.prompts.push_back(std::move(s));
      }
      for (const auto& ids : args->prompt_ids) {
        engine::PromptSpec s;
        s.ids = engine::parse_id_list(ids, "--prompt-ids");
        s.has_ids = true;
        s.params = args->params;
        s.lora = args->use_lora;
        job.prompts.push_back(std::move(s));
      }
      if (!args->prompts_file.empty()) {
        for (auto& s : engine::read_prompt_file(args->prompts_file, args->params)) {
          job.prompts.push_back(std::move(s));
        }
      }
      TESSERA_CHECK(!job.prompts.empty(), "no prompts: give --prompt, --prompt-ids or --prompts");
    } catch (const Error& e) {
      throw CollectiveError(e.message(), __FILE__, __LINE__);
    }
    const bool lead = world.rank == 0;
    ProgressBar bar(lead && !args->json && !args->no_progress && isatty(STDERR_FILENO));
    job.on_ready = [&](const std::string& table) {
      if (!args->json) std::fprintf(stderr, "%s", table.c_str());
    };
    job.progress = [&](const engine::Progress& pr) { bar.update(pr); };
    const auto rep = engine::run_generate(job, world.comm.get());
    bar.finish();
    if (!lead) return rep.failed > 0 ? 1 : 0;

    int failed = 0;
    for (const auto& o : rep.outputs) {
      if (o.result.finish_reason == "error") {
        ++failed;
        std::fprintf(stderr, "tessera: error: %s\n", o.result.error.c_str());
      }
    }
    const auto& s = rep.summary;
    if (args->json) {
      nlohmann::json reqs = nlohmann::json::array();
      for (size_t i = 0; i < rep.outputs.size(); ++i) {
        const auto& r = rep.outputs[i].result;
        // Prompt scores (prompt_logprobs in a --prompts line): [id, logprob, rank, [[id, lp]...]]
        // for each prompt token from the second on.
        nlohmann::json scores = nlohmann::json::array();
        for (const auto& e : r.prompt_logprobs) {
          nlohmann::json top = nlohmann::json::array();
          for (const auto& t : e.top) top.push_back({t.id, t.logprob});
          scores.push_back({e.id, e.logprob, e.rank, top});
        }
        reqs.push_back({{"index", i},
                        {"id", r.id},
                        {"prompt_ids", r.prompt_ids},
                        {"output_ids", r.output_ids},
                        {"text", rep.outputs[i].text},
                        {"finish_reason", r.finish_reason},
                        {"error", r.error},
                        {"cached_prompt_tokens", r.cached_prompt_tokens},
                        {"first_token_s", r.first_token_s},
                        {"finished_s", r.finished_s}});
        if (!r.prompt_logprobs.empty()) reqs.back()["prompt_logprobs"] = std::move(scores);
      }
      // Rank 0's device, "cpu" or "cuda:N", as the launcher chose it.
      const std::string device_name =
          job.engine.device >= 0 ? "cuda:" + std::to_string(job.engine.device) : "cpu";
      nlohmann::json j{{"model", job.engine.model},
                       {"model_dir", rep.model_dir},
                       {"world_size", rep.world},
                       {"device", device_name},
                       {"tensor_parallel", rep.tp},
                       {"data_parallel", rep.dp},
                       {"decode_context_parallel", rep.dcp},
                       {"kv_cache_blocks", rep.kv_blocks},
                       {"kv_cache_bytes_per_rank", rep.kv_bytes_per_rank},
                       {"weight_bytes_per_rank", rep.weight_bytes_per_rank},
                       {"load_s", rep.load_s},
                       {"requests", reqs},
                       {"sparse_decode", sparse_json(job.engine.sparse, s.sparse)},
                       {"summary",
                        {{"seconds", s.seconds},
                         {"requests", s.requests},
                         {"failed", s.failed},
                         {"prompt_tokens", s.prompt_tokens},
                         {"output_tokens", s.output_tokens},
                         {"computed_tokens", s.computed_tokens},
                         {"output_tok_s", s.output_tok_s()},
                         {"steps", s.steps},
                         {"preemptions", s.preemptions},
                         {"prefix_hit_tokens", s.prefix_hit_tokens}}}};
      std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    } else {
      const bool one = rep.outputs.size() == 1;
      for (const auto& o : rep.outputs) {
        if (o.result.finish_reason == "error") continue;
        if (!one) {
          std::printf("--- request %s (%s) ---\n", o.result.id.c_str(),
                      o.result.finish_reason.c_str());
        }
        std::printf("%s\n", printable(o.text).c_str());
        std::printf("output ids: %s\n", join(o.result.output_ids).c_str());
      }
      std::fprintf(stderr,
                   "[%d rank(s): tp %d x dp %d%s] %lld requests (%d failed): prompt %lld tokens "
                   "(%lld from the prefix cache), generated %lld tokens in %.2f s (%.0f tok/s); "
                   "load %.2f s, %lld steps, %lld preemptions\n",
                   rep.world, rep.tp, rep.dp,
                   rep.dcp > 1 ? (", dcp " + std::to_string(rep.dcp)).c_str() : "",
                   static_cast<long long>(s.requests), failed,
                   static_cast<long long>(s.prompt_tokens),
                   static_cast<long long>(s.prefix_hit_tokens),
                   static_cast<long long>(s.output_tokens), s.seconds, s.output_tok_s(), rep.load_s,
                   static_cast<long long>(s.steps), static_cast<long long>(s.preemptions));
      if (job.engine.sparse.enabled()) {
        const auto& sp = s.sparse;
        std::fprintf(
            stderr,
            "[sparse decode %s, budget %lld] %lld decode rows x layers read %lld of "
            "%lld context tokens: %.1f of %.1f KiB of KV (%.3f of dense, leader rank)\n",
            job.engine.sparse.method.c_str(), static_cast<long long>(job.engine.sparse.budget),
            static_cast<long long>(sp.rows), static_cast<long long>(sp.tokens_read),
            static_cast<long long>(sp.tokens_context), sp.kv_bytes_read / 1024.0,
            sp.kv_bytes_dense / 1024.0,
            sp.kv_bytes_dense > 0 ? static_cast<double>(sp.kv_bytes_read) / sp.kv_bytes_dense
                                  : 0.0);
      }
    }
    std::fflush(stdout);
    return failed > 0 ? 1 : 0;
  };
  return {app, action, false};
}

}  // namespace tessera::cli
