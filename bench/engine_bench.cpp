// `tessera bench engine`: offline throughput of the engine on a fixed workload (64 prompts of
// mixed lengths, 128 new tokens each, greedy) on a LLaMA-shaped checkpoint of ~60 M parameters
// that the bench writes (random weights, fixed seed), against Hugging Face transformers
// generate() and CTranslate2 generate_batch on the same checkpoint and threads, measured in the
// same run in interleaved rounds (bench/engine_peers.py runs them; every variant tried is
// reported, the fastest is the headline). Also: the scheduler's step time with 1,024 running
// requests (bench/scheduler_bench.h) and the speedup of prefix caching on a shared-prefix
// workload. JSON keys: throughput_tok_s {tessera, hf, ct2}, scheduler_step_us_1024,
// prefix_cache_speedup.
#include <ATen/Parallel.h>
#include <sys/wait.h>
#include <torch/types.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "bench/bench.h"
#include "bench/scheduler_bench.h"
#include "common/error.h"
#include "runtime/engine/engine_core.h"
#include "runtime/engine/llm.h"
#include "runtime/models/model_config.h"
#include "runtime/models/safetensors.h"

namespace tessera::bench {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Shape {
  int64_t vocab, hidden, intermediate, layers, heads, kv_heads, max_positions;
};

struct Workload {
  std::vector<std::vector<int32_t>> prompts;
  int64_t new_tokens = 0;
  int64_t prompt_tokens() const {
    int64_t n = 0;
    for (const auto& p : prompts) n += static_cast<int64_t>(p.size());
    return n;
  }
};

struct Sizes {
  Shape shape;
  int64_t num_prompts, min_len, max_len, new_tokens, rounds;
  int64_t prefix_requests, prefix_len, suffix_len, prefix_new_tokens;
  int64_t scheduler_steps;
};

Sizes sizes(bool quick) {
  if (quick) {
    return {{2048, 128, 384, 2, 4, 2, 512}, 16, 8, 64, 16, 1, 8, 96, 8, 4, 300};
  }
  // 8 layers x (q, k, v, o with 4 of 8 KV heads + SwiGLU 512 -> 1536) + 2 x 32000 x 512
  // embeddings: 58.5 M parameters.
  return {{32000, 512, 1536, 8, 8, 4, 2048}, 64, 16, 384, 128, 3, 32, 512, 16, 16, 2000};
}

// The machine's 1-minute load average (other processes compete for the same cores).
double load_average() {
  double l = -1;
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf", &l) != 1) l = -1;
    std::fclose(f);
  }
  return l;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : (v[(v.size() - 1) / 2] + v[v.size() / 2]) / 2;
}

json spread(const std::vector<double>& v) {
  return {{"median", median(v)},
          {"min", *std::min_element(v.begin(), v.end())},
          {"max", *std::max_element(v.begin(), v.end())},
          {"rounds", v}};
}

// A LLaMA-shaped checkpoint with random weights (normal, std 0.02; norms 1), fixed seed.
std::string write_checkpoint(const Shape& s, const std::string& dir) {
  models::ModelConfig c;
  c.model_type = "llama";
  c.vocab_size = s.vocab;
  c.hidden_size = s.hidden;
  c.intermediate_size = s.intermediate;
  c.num_hidden_layers = s.layers;
  c.num_attention_heads = s.heads;
  c.num_key_value_heads = s.kv_heads;
  c.head_dim = s.hidden / s.heads;
  c.max_position_embeddings = s.max_positions;
  c.rope_theta = 10000.0;
  c.rms_norm_eps = 1e-5;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  c.layer_windows.assign(s.layers, 0);
  fs::create_directories(dir);
  torch::manual_seed(1234);
  std::vector<models::TensorToWrite> ts;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, bool norm) {
    auto t = norm ? torch::ones(shape) : torch::randn(shape) * 0.02;
    t = t.contiguous();
    models::TensorToWrite w{name, DType::kF32, shape, {}};
    w.bytes.resize(t.numel() * 4);
    std::memcpy(w.bytes.data(), t.data_ptr<float>(), w.bytes.size());
    ts.push_back(std::move(w));
  };
  const int64_t h = s.hidden, d = c.head_dim, q = s.heads * d, kv = s.kv_heads * d;
  add("model.embed_tokens.weight", {s.vocab, h}, false);
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {h}, true);
    add(p + "self_attn.q_proj.weight", {q, h}, false);
    add(p + "self_attn.k_proj.weight", {kv, h}, false);
    add(p + "self_attn.v_proj.weight", {kv, h}, false);
    add(p + "self_attn.o_proj.weight", {h, q}, false);
    add(p + "post_attention_layernorm.weight", {h}, true);
    add(p + "mlp.gate_proj.weight", {s.intermediate, h}, false);
    add(p + "mlp.up_proj.weight", {s.intermediate, h}, false);
    add(p + "mlp.down_proj.weight", {h, s.intermediate}, false);
  }
  add("model.norm.weight", {h}, true);
  add("lm_head.weight", {s.vocab, h}, false);
  models::write_safetensors(dir + "/model.safetensors", ts, {{"format", "pt"}});
  std::ofstream(dir + "/config.json") << c.to_json_text();
  return dir;
}

Workload make_workload(const Sizes& z, uint32_t seed) {
  std::mt19937 rng(seed);
  Workload w;
  w.new_tokens = z.new_tokens;
  for (int64_t i = 0; i < z.num_prompts; ++i) {
    const int64_t len = z.min_len + static_cast<int64_t>(rng() % (z.max_len - z.min_len + 1));
    std::vector<int32_t> p{1};
    while (static_cast<int64_t>(p.size()) < len) {
      p.push_back(static_cast<int32_t>(3 + rng() % (z.shape.vocab - 3)));
    }
    w.prompts.push_back(std::move(p));
  }
  return w;
}

std::vector<engine::EngineRequest> requests(const Workload& w) {
  std::vector<engine::EngineRequest> out;
  for (size_t i = 0; i < w.prompts.size(); ++i) {
    engine::EngineRequest r;
    r.id = std::to_string(i);
    r.prompt_ids = w.prompts[i];
    r.params.temperature = 0.0f;
    r.params.max_tokens = w.new_tokens;
    r.params.ignore_eos = true;
    out.push_back(std::move(r));
  }
  return out;
}

// The peers' process: one JSON command per line on its stdin, one reply per line on its stdout.
class Peers {
 public:
  Peers(const std::string& python, const std::string& script, const std::string& log) {
    int in[2], out[2];
    TESSERA_CHECK(::pipe(in) == 0 && ::pipe(out) == 0, "pipe failed");
    pid_ = ::fork();
    TESSERA_CHECK(pid_ >= 0, "fork failed");
    if (pid_ == 0) {
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      if (FILE* f = std::fopen(log.c_str(), "w")) ::dup2(fileno(f), 2);
      ::close(in[1]);
      ::close(out[0]);
      ::execl(python.c_str(), python.c_str(), script.c_str(), static_cast<char*>(nullptr));
      std::_Exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    to_ = ::fdopen(in[1], "w");
    from_ = ::fdopen(out[0], "r");
  }
  ~Peers() {
    std::fputs("{\"cmd\": \"quit\"}\n", to_);
    std::fclose(to_);
    std::fclose(from_);
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }
  json call(const json& cmd) {
    const std::string line = cmd.dump() + "\n";
    std::fputs(line.c_str(), to_);
    std::fflush(to_);
    std::string reply;
    char buf[65536];
    while (std::fgets(buf, sizeof(buf), from_)) {
      reply += buf;
      if (!reply.empty() && reply.back() == '\n') break;
    }
    TESSERA_CHECK(!reply.empty(), "the peers' process (", cmd.value("cmd", "?"),
                  ") ended without a reply");
    auto j = json::parse(reply);
    TESSERA_CHECK(!j.contains("error"), "peer command ", cmd.value("cmd", "?"),
                  " failed: ", j["error"].get<std::string>());
    return j;
  }

 private:
  pid_t pid_ = -1;
  FILE* to_ = nullptr;
  FILE* from_ = nullptr;
};

// The test venv's python (transformers, ctranslate2): $TESSERA_VENV_PYTHON, $TESSERA_VENV, or the
// build's venv; "" when none exists.
std::string find_venv_python() {
  for (const std::string& p :
       {std::string(std::getenv("TESSERA_VENV_PYTHON") ? std::getenv("TESSERA_VENV_PYTHON") : ""),
        std::string(std::getenv("TESSERA_VENV")
                        ? std::string(std::getenv("TESSERA_VENV")) + "/bin/python"
                        : ""),
        std::string(TESSERA_BENCH_DEFAULT_VENV) + "/bin/python"}) {
    if (!p.empty() && ::access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

engine::EngineConfig engine_config(const std::string& dir, const Sizes& z, bool prefix) {
  engine::EngineConfig c;
  c.model = dir;
  c.max_num_seqs = std::max<int64_t>(z.num_prompts, z.prefix_requests);
  c.max_num_batched_tokens = 2048;
  c.max_model_len = std::max(z.max_len + z.new_tokens, z.prefix_len + z.suffix_len + 64);
  c.enable_prefix_caching = prefix;
  c.kv_cache_memory = int64_t{1} << 29;
  return c;
}

int run_engine_bench(const BenchOptions& opt) {
  if (opt.rank != 0) return 0;  // one process; other ranks have nothing to do
  torch::NoGradGuard no_grad;
  const Sizes z = sizes(opt.quick);
  const int threads = at::get_num_threads();
  const double load_before = load_average();
  char tmpl[] = "/tmp/tessera_bench_engine_XXXXXX";
  TESSERA_CHECK(::mkdtemp(tmpl) != nullptr, "cannot make a temporary folder");
  const std::string work = tmpl;
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{work};
  const std::string model_dir = write_checkpoint(z.shape, work + "/model");
  const auto config = models::ModelConfig::from_file(model_dir + "/config.json");
  const Workload w = make_workload(z, 42);
  auto say = [&](const char* fmt, auto... args) {
    if (!opt.json) {
      if constexpr (sizeof...(args) == 0) {
        std::fputs(fmt, stderr);
      } else {
        std::fprintf(stderr, fmt, args...);
      }
      std::fflush(stderr);
    }
  };
  say("engine bench: %.1f M parameters, %lld prompts of %lld-%lld tokens (%lld in all) x %lld "
      "new tokens, %d threads, %lld rounds\n",
      config.num_params() / 1e6, static_cast<long long>(w.prompts.size()),
      static_cast<long long>(z.min_len), static_cast<long long>(z.max_len),
      static_cast<long long>(w.prompt_tokens()), static_cast<long long>(w.new_tokens), threads,
      static_cast<long long>(z.rounds));

  // Peers: present unless the venv is missing (allowed to skip only in --quick).
  std::unique_ptr<Peers> peers;
  std::string peers_skipped;
  json peer_versions;
  std::string python = find_venv_python();
  if (python.empty() && !opt.quick) {
    say("no venv with transformers / ctranslate2: making one (scripts/test_venv.sh)\n");
    const std::string cmd = "TESSERA_VENV='" + std::string(TESSERA_BENCH_DEFAULT_VENV) + "' '" +
                            std::string(TESSERA_BENCH_SOURCE_DIR) + "/scripts/test_venv.sh' >&2";
    TESSERA_CHECK(std::system(cmd.c_str()) == 0,
                  "could not make the peers' venv (scripts/test_venv.sh); the full bench needs "
                  "transformers and ctranslate2");
    python = find_venv_python();
  }
  if (python.empty()) {
    peers_skipped = "no venv with transformers and ctranslate2 (TESSERA_VENV_PYTHON unset, " +
                    std::string(TESSERA_BENCH_DEFAULT_VENV) + " absent)";
    say("peers SKIPPED: %s\n", peers_skipped.c_str());
  } else {
    const char* script_env = std::getenv("TESSERA_BENCH_PEERS_PY");
    const std::string script = script_env ? script_env : TESSERA_BENCH_PEERS_PY;
    peers = std::make_unique<Peers>(python, script, work + "/peers.log");
    const auto loaded = peers->call(
        {{"cmd", "load"}, {"model", model_dir}, {"ct2_dir", work + "/ct2"}, {"threads", threads}});
    peer_versions = loaded["versions"];
    say("peers loaded in %.1f s (%s)\n", loaded["load_s"].get<double>(),
        peer_versions.dump().c_str());
  }

  // Throughput, interleaved rounds: Tessera, then each peer variant.
  engine::EngineCore core(engine_config(model_dir, z, /*prefix=*/false), nullptr, nullptr);
  const std::vector<std::pair<std::string, std::string>> variants = {
      {"hf", "all"}, {"hf", "sorted16"}, {"ct2", "all"}, {"ct2", "sorted16"}};
  std::map<std::string, std::vector<double>> tok_s;  // "tessera", "hf/all", ...
  std::map<std::string, int64_t> tokens;
  json prompts = w.prompts;
  for (int64_t round = 0; round < z.rounds; ++round) {
    engine::GenerateSummary s;
    engine::generate(core, requests(w), {}, &s);
    TESSERA_CHECK(s.failed == 0, "tessera: ", s.failed, " requests failed");
    tok_s["tessera"].push_back(s.output_tok_s());
    tokens["tessera"] = s.output_tokens;
    say("round %lld: tessera %.1f tok/s (%lld steps)", static_cast<long long>(round),
        s.output_tok_s(), static_cast<long long>(s.steps));
    if (peers) {
      for (const auto& [peer, variant] : variants) {
        const auto r = peers->call({{"cmd", "run"},
                                    {"peer", peer},
                                    {"variant", variant},
                                    {"prompts", prompts},
                                    {"new_tokens", w.new_tokens}});
        const std::string key = peer + "/" + variant;
        tok_s[key].push_back(r["tokens"].get<double>() / r["seconds"].get<double>());
        tokens[key] = r["tokens"].get<int64_t>();
        say(", %s %.1f", key.c_str(), tok_s[key].back());
      }
    }
    say("\n");
  }
  const int64_t expected_tokens = static_cast<int64_t>(w.prompts.size()) * w.new_tokens;
  for (const auto& [key, n] : tokens) {
    TESSERA_CHECK(n == expected_tokens, key, " generated ", n, " tokens, expected ",
                  expected_tokens);
  }

  // Prefix caching: requests sharing a long prefix, with and without the cache (a new prefix
  // every round, so nothing carries over between rounds).
  engine::EngineCore with(engine_config(model_dir, z, true), nullptr, nullptr);
  engine::EngineCore without(engine_config(model_dir, z, false), nullptr, nullptr);
  std::vector<double> on_s, off_s;
  for (int64_t round = 0; round < z.rounds; ++round) {
    std::mt19937 rng(1000 + static_cast<uint32_t>(round));
    Workload pw;
    pw.new_tokens = z.prefix_new_tokens;
    std::vector<int32_t> prefix{1};
    while (static_cast<int64_t>(prefix.size()) < z.prefix_len) {
      prefix.push_back(static_cast<int32_t>(3 + rng() % (z.shape.vocab - 3)));
    }
    for (int64_t i = 0; i < z.prefix_requests; ++i) {
      auto p = prefix;
      for (int64_t k = 0; k < z.suffix_len; ++k) {
        p.push_back(static_cast<int32_t>(3 + rng() % (z.shape.vocab - 3)));
      }
      pw.prompts.push_back(std::move(p));
    }
    engine::GenerateSummary a, b;
    engine::generate(without, requests(pw), {}, &b);
    engine::generate(with, requests(pw), {}, &a);
    off_s.push_back(b.seconds);
    on_s.push_back(a.seconds);
  }
  const double prefix_speedup = median(off_s) / median(on_s);
  say("prefix caching: %.3f s -> %.3f s (x%.2f)\n", median(off_s), median(on_s), prefix_speedup);

  // The scheduler alone with 1,024 running requests (no model).
  SchedulerStepOptions so;
  so.num_requests = 1024;
  so.steps = z.scheduler_steps;
  const auto sched = measure_scheduler_step(so);

  // Headline: the fastest variant of each peer.
  auto best = [&](const std::string& peer) {
    double b = 0;
    std::string which;
    for (const auto& [key, v] : tok_s) {
      if (key.rfind(peer + "/", 0) == 0 && median(v) > b) {
        b = median(v);
        which = key;
      }
    }
    return std::make_pair(b, which);
  };
  const double tessera = median(tok_s["tessera"]);
  const auto [hf, hf_which] = best("hf");
  const auto [ct2, ct2_which] = best("ct2");
  json out;
  out["benchmark"] = "engine";
  out["quick"] = opt.quick;
  out["threads"] = threads;
  out["load_average"] = {{"before", load_before},
                         {"after", load_average()},
                         {"cores", static_cast<int>(std::thread::hardware_concurrency())}};
  out["model"] = {{"params", config.num_params()},
                  {"vocab", z.shape.vocab},
                  {"hidden", z.shape.hidden},
                  {"layers", z.shape.layers},
                  {"heads", z.shape.heads},
                  {"kv_heads", z.shape.kv_heads},
                  {"intermediate", z.shape.intermediate},
                  {"dtype", "float32"}};
  out["workload"] = {{"prompts", w.prompts.size()},
                     {"prompt_tokens", w.prompt_tokens()},
                     {"min_len", z.min_len},
                     {"max_len", z.max_len},
                     {"new_tokens", w.new_tokens}};
  out["throughput_tok_s"] = {
      {"tessera", tessera}, {"hf", peers ? json(hf) : json()}, {"ct2", peers ? json(ct2) : json()}};
  json all = json::object();
  for (const auto& [key, v] : tok_s) all[key] = spread(v);
  out["throughput_rounds"] = all;
  if (peers) {
    out["peers"] = {{"versions", peer_versions}, {"hf_best", hf_which}, {"ct2_best", ct2_which}};
    out["vs_hf"] = tessera / hf;
    out["vs_ct2"] = tessera / ct2;
  } else {
    out["peers_skipped"] = peers_skipped;
  }
  out["scheduler_step_us_1024"] = sched.median_us;
  out["scheduler_step"] = {{"p10_us", sched.p10_us},
                           {"p90_us", sched.p90_us},
                           {"baseline_append_median_us", sched.baseline_append_median_us}};
  out["prefix_cache_speedup"] = prefix_speedup;
  out["prefix_cache"] = {{"requests", z.prefix_requests}, {"shared_prefix", z.prefix_len},
                         {"suffix", z.suffix_len},        {"new_tokens", z.prefix_new_tokens},
                         {"seconds_on", spread(on_s)},    {"seconds_off", spread(off_s)}};
  if (opt.json) {
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf("%-22s %12s %12s %12s\n", "throughput (tok/s)", "median", "min", "max");
    for (const auto& [key, v] : tok_s) {
      std::printf("%-22s %12.1f %12.1f %12.1f\n", key.c_str(), median(v),
                  *std::min_element(v.begin(), v.end()), *std::max_element(v.begin(), v.end()));
    }
    if (peers) {
      std::printf("tessera vs %s: x%.2f; vs %s: x%.2f\n", hf_which.c_str(), tessera / hf,
                  ct2_which.c_str(), tessera / ct2);
    } else {
      std::printf("peers SKIPPED: %s\n", peers_skipped.c_str());
    }
    std::printf("scheduler step, 1,024 running: %.1f us (median; p10 %.1f, p90 %.1f)\n",
                sched.median_us, sched.p10_us, sched.p90_us);
    std::printf("machine load average %.1f before, %.1f after, on %u cores\n", load_before,
                load_average(), std::thread::hardware_concurrency());
    std::printf("prefix caching (%lld requests sharing %lld tokens): x%.2f\n",
                static_cast<long long>(z.prefix_requests), static_cast<long long>(z.prefix_len),
                prefix_speedup);
  }
  std::fflush(stdout);
  return 0;
}

}  // namespace

Benchmark engine_benchmark() {
  return {"engine",
          "Offline engine throughput vs transformers and CTranslate2 (same run), scheduler step "
          "time, prefix-caching speedup",
          run_engine_bench};
}

}  // namespace tessera::bench
