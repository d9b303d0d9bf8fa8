// The engine behind `tessera serve` (serve_engine.h): EngineCore + AsyncEngine as a
// ServingBackend, the model folder's tokenizer, and the mpirun job (groups, replica servers,
// router, shutdown). MPI is initialised FUNNELED, so every collective (the plans included) runs
// on the main thread: under mpirun the engine loop owns the main thread, HTTP runs on the I/O
// pool and a signal thread drives the shutdown.
#include <signal.h>
#include <torch/types.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "common/logging.h"
#include "launch/cli/cli_sizes.h"
#include "launch/cli/serve_engine.h"
#include "runtime/engine/async_engine.h"
#include "runtime/engine/embedding_client.h"
#include "runtime/engine/engine_core.h"
#include "runtime/models/encoder_config.h"
#include "runtime/models/model_folder.h"
#include "runtime/serving/hf_tokenizer.h"
#include "runtime/serving/http_client.h"
#include "runtime/serving/signals.h"
#include "runtime/tokenizers/chat_template.h"
#include "sharding/communicator.h"
#include "sharding/mpi/mpi_communicator.h"
#include "sharding/process_groups.h"
#include "sharding/watchdog.h"

namespace tessera::cli {
namespace {

using nlohmann::json;

std::string adapter_lora_name(const serving::ModelSpec& spec) {
  return spec.adapter.empty() ? "" : "adapter:" + spec.name;
}

}  // namespace

std::string chat_template_source(const std::string& value) {
  std::error_code ec;
  std::string source;
  if (std::filesystem::is_regular_file(value, ec)) {
    std::ifstream in(value, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    TESSERA_CHECK(in.good() || in.eof(), "--chat-template: cannot read '", value, "'");
    source = ss.str();
  } else {
    TESSERA_CHECK(value.find("{{") != std::string::npos || value.find("{%") != std::string::npos,
                  "--chat-template '", value,
                  "' is neither a file nor a template (no '{{' or '{%' in it)");
    source = value;
  }
  TESSERA_CHECK(!source.empty(), "--chat-template: '", value, "' is empty");
  try {
    (void)tokenizers::ChatTemplate::from_string(source);
  } catch (const Error& e) {
    TESSERA_FAIL("--chat-template: ", e.message());
  }
  return source;
}

namespace {

// --generation-config auto: the sampling defaults of a decoder folder (EngineBackend).
nlohmann::json generation_defaults(const std::string& dir, const std::string& mode) {
  nlohmann::json out = nlohmann::json::object();
  if (mode != "auto") return out;
  const auto folder = models::ModelFolder::open(dir);
  if (!folder.generation_config_json()) return out;
  const std::string& path = *folder.generation_config_json();
  std::ifstream in(path);
  const auto g = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  TESSERA_CHECK(g.is_object(), path, " is not a JSON object");
  // vLLM's keys; the values are checked again with each request's own (the request parser).
  for (const char* k : {"temperature", "top_p", "top_k", "min_p", "repetition_penalty"}) {
    if (!g.contains(k) || g[k].is_null()) continue;
    TESSERA_CHECK(g[k].is_number(), path, ": '", k, "' must be a number, got ", g[k].dump());
    out[k] = g[k];
  }
  if (g.contains("max_new_tokens") && !g["max_new_tokens"].is_null()) {
    TESSERA_CHECK(
        g["max_new_tokens"].is_number_integer() && g["max_new_tokens"].get<int64_t>() >= 1, path,
        ": 'max_new_tokens' must be a positive integer, got ", g["max_new_tokens"].dump());
    out["max_tokens"] = g["max_new_tokens"];
  }
  if (!out.empty()) {
    log::info(
        "serving: requests to {} default to {} (generation_config.json; "
        "--generation-config none turns this off)",
        dir, out.dump());
  }
  return out;
}

}  // namespace

void check_engine_flags(const EngineFlags& f) {
  TESSERA_CHECK(f.generation_config == "auto" || f.generation_config == "none",
                "--generation-config must be auto or none, got '", f.generation_config, "'");
  if (!f.chat_template.empty()) chat_template_source(f.chat_template);
  TESSERA_CHECK(f.max_num_seqs >= 1, "--max-num-seqs must be >= 1, got ", f.max_num_seqs);
  TESSERA_CHECK(f.max_num_batched_tokens >= 1, "--max-num-batched-tokens must be >= 1, got ",
                f.max_num_batched_tokens);
  TESSERA_CHECK(f.max_model_len >= 0, "--max-model-len must be >= 0, got ", f.max_model_len);
  TESSERA_CHECK(f.block_size >= 1, "--block-size must be >= 1, got ", f.block_size);
  TESSERA_CHECK(f.seed >= 0, "--seed must be >= 0, got ", f.seed);
  if (!f.kv_cache_memory.empty()) parse_size("--kv-cache-memory", f.kv_cache_memory);
  const auto& kd = f.kv_cache_dtype;
  TESSERA_CHECK(kd == "float32" || kd == "bfloat16" || kd == "float16",
                "--kv-cache-dtype must be float32, bfloat16 or float16, got '", kd, "'");
  TESSERA_CHECK(f.kv_cache_fraction > 0 && f.kv_cache_fraction <= 1,
                "--kv-cache-fraction must be in (0, 1], got ", f.kv_cache_fraction);
}

namespace {

engine::EngineConfig engine_config(const EngineFlags& f, const std::string& model, int device) {
  check_engine_flags(f);
  engine::EngineConfig ec;
  ec.model = model;
  ec.max_num_seqs = f.max_num_seqs;
  ec.max_num_batched_tokens = f.max_num_batched_tokens;
  ec.max_model_len = f.max_model_len;
  ec.block_size = f.block_size;
  if (!f.kv_cache_memory.empty())
    ec.kv_cache_memory = parse_size("--kv-cache-memory", f.kv_cache_memory);
  const auto& kd = f.kv_cache_dtype;
  ec.kv_cache_dtype =
      kd == "float32" ? DType::kF32 : (kd == "bfloat16" ? DType::kBF16 : DType::kF16);
  ec.device_memory_fraction = f.kv_cache_fraction;
  ec.enable_prefix_caching = !f.no_prefix_caching;
  ec.device = device;
  ec.seed = static_cast<uint64_t>(f.seed);
  return ec;
}

// An engine (owned, or the job's) with its tokenizer. close() ends the engine loop; an owned
// engine is joined and freed with it.
class EngineBackend : public serving::ServingBackend {
 public:
  EngineBackend(std::unique_ptr<engine::EngineCore> owned, engine::EngineCore& core,
                std::shared_ptr<serving::ServingTokenizer> tok, std::string lora,
                nlohmann::json defaults)
      : owned_(std::move(owned)),
        engine_(std::make_unique<engine::AsyncEngine>(core)),
        tok_(std::move(tok)),
        lora_(std::move(lora)),
        defaults_(std::move(defaults)) {}
  ~EngineBackend() override { close(); }

  void close() override {
    std::lock_guard lock(mu_);
    if (engine_ == nullptr) return;
    engine_->stop();
    if (owned_) {  // our loop thread: join it and free the weights and the KV cache
      engine_.reset();
      owned_.reset();
    }
  }
  engine::EngineClient* engine() override { return engine_.get(); }
  const serving::ServingTokenizer& tokenizer() const override { return *tok_; }
  std::string lora() const override { return lora_; }
  nlohmann::json sampling_defaults() const override { return defaults_; }
  engine::AsyncEngine& async() { return *engine_; }

 private:
  std::mutex mu_;
  std::unique_ptr<engine::EngineCore> owned_;
  std::unique_ptr<engine::AsyncEngine> engine_;
  std::shared_ptr<serving::ServingTokenizer> tok_;
  std::string lora_;  // a NAME=PATH:ADAPTER backend: every request runs its adapter
  nlohmann::json defaults_;
};

// An encoder folder (BERT, ModernBERT, with its sentence-transformers modules) as a backend that
// answers /v1/embeddings and, with a *ForSequenceClassification head, /classify: the EncoderService
// (its own batching thread) behind serving's EmbeddingClient hook. Text inputs are tokenized by the
// folder's tokenizer.json with its special tokens (no sentence-transformers prompt); an input past
// the model's length is a 400, as vLLM.
class EncoderBackend : public serving::ServingBackend, public serving::EmbeddingClient {
 public:
  EncoderBackend(std::unique_ptr<engine::EncoderService> svc,
                 std::shared_ptr<serving::ServingTokenizer> tok)
      : svc_(std::move(svc)), tok_(std::move(tok)) {}
  ~EncoderBackend() override { close(); }

  void close() override {
    std::lock_guard lock(mu_);
    if (svc_ == nullptr) return;
    svc_->stop();  // after the last lease: no request is in flight
    svc_.reset();
  }
  engine::EngineClient* engine() override { return nullptr; }
  const serving::ServingTokenizer& tokenizer() const override { return *tok_; }
  serving::EmbeddingClient* embedder() override { return this; }

  void embed(std::vector<std::vector<int32_t>> inputs, Done done) override {
    svc_->embed(std::move(inputs), std::move(done));
  }
  int64_t max_input_len() const override { return svc_->max_input_len(); }
  int64_t dimensions() const override { return svc_->info().dimensions; }
  std::vector<std::string> labels() const override {
    return svc_->info().has_classifier ? svc_->info().labels : std::vector<std::string>{};
  }
  std::string score_function() const override { return svc_->info().score_function; }
  void classify(std::vector<std::vector<int32_t>> inputs, Done done) override {
    std::vector<engine::EncoderInput> in(inputs.size());
    for (size_t i = 0; i < inputs.size(); ++i) in[i].ids = std::move(inputs[i]);
    svc_->submit(engine::EncoderTask::kClassify, std::move(in), std::move(done));
  }

 private:
  std::mutex mu_;
  std::unique_ptr<engine::EncoderService> svc_;
  std::shared_ptr<serving::ServingTokenizer> tok_;
};

std::shared_ptr<serving::ServingBackend> load_encoder(const serving::ModelSpec& spec,
                                                      const std::string& dir, int device) {
  TESSERA_CHECK(spec.loras.empty() && spec.adapter.empty(), "model '", spec.name,
                "' is an encoder: LoRA adapters on encoders are served by tessera embed "
                "(--lora), not tessera serve");
  engine::EncoderOptions options;
  options.model = dir;
  options.device = device;
  auto svc = std::make_unique<engine::EncoderService>(options, nullptr, nullptr);
  svc->start();  // its batching loop on a thread of its own (one rank)
  auto tok = serving::load_serving_tokenizer(dir);
  return std::make_shared<EncoderBackend>(std::move(svc), std::move(tok));
}

std::shared_ptr<serving::ServingTokenizer> tokenizer_for(const engine::EngineCore& core,
                                                         const EngineFlags& flags) {
  auto tok = serving::load_serving_tokenizer(
      core.model_dir(),
      flags.chat_template.empty() ? "" : chat_template_source(flags.chat_template));
  // Ids the tokenizer can produce must be rows of the embedding.
  TESSERA_CHECK(tok->vocab_size() <= core.model_config().vocab_size, "the tokenizer of ",
                core.model_dir(), " has ", tok->vocab_size(), " ids but the model's vocab_size is ",
                core.model_config().vocab_size);
  return tok;
}

// The adapters of a model's engine: its --lora ones, and for NAME=PATH:ADAPTER its own (named
// after the served name, which --lora names cannot be: they hold no ':' and NAME is unique).
std::vector<std::pair<std::string, std::string>> engine_loras(const serving::ModelSpec& spec) {
  auto loras = spec.loras;
  if (!spec.adapter.empty()) loras.emplace_back(adapter_lora_name(spec), spec.adapter);
  return loras;
}

// Runs `fn` on every rank; a failure anywhere is thrown on every rank as one CollectiveError.
template <typename Fn>
void agreed(sharding::Communicator* comm, Fn&& fn) {
  std::string err;
  try {
    fn();
  } catch (const Error& e) {
    err = e.message();
  } catch (const std::exception& e) {
    err = e.what();
  }
  if (comm != nullptr && comm->size() > 1) err = comm->agree_on_error(err);
  if (!err.empty()) throw CollectiveError(err, __FILE__, __LINE__);
}

// Every rank's text on every rank (lengths, then the padded bytes).
std::vector<std::string> all_gather_text(sharding::Communicator& comm, const std::string& text) {
  auto len = torch::full({1}, static_cast<int64_t>(text.size()), torch::kLong);
  auto lens = comm.all_gather(len).view({-1});
  const int64_t max_len = lens.max().item<int64_t>();
  auto buf = torch::zeros({std::max<int64_t>(max_len, 1)}, torch::kByte);
  std::memcpy(buf.data_ptr<uint8_t>(), text.data(), text.size());
  auto all = comm.all_gather(buf).contiguous().view({comm.size(), -1});
  std::vector<std::string> out;
  for (int r = 0; r < comm.size(); ++r) {
    const auto* p = all[r].data_ptr<uint8_t>();
    out.emplace_back(reinterpret_cast<const char*>(p), lens[r].item<int64_t>());
  }
  return out;
}

// POST /internal/shutdown to a replica; waits for the answer (or the error) at most `timeout`.
void ask_replica_to_stop(serving::IoRuntime& io, const std::string& url, const std::string& token,
                         std::chrono::milliseconds timeout) {
  auto done = std::make_shared<std::promise<std::string>>();
  auto fut = done->get_future();
  serving::ClientRequest req;
  req.method = "POST";
  req.target = "/internal/shutdown";
  req.headers.emplace_back("X-Tessera-Shutdown", token);
  serving::ClientCallbacks cb;
  cb.on_data = [](std::string_view) {};
  cb.on_done = [done](const std::string& error) { done->set_value(error); };
  serving::ClientTimeouts t;
  t.total = timeout;
  serving::http_request(io, serving::parse_url(url), std::move(req), std::move(cb), t);
  if (fut.wait_for(timeout + std::chrono::seconds(1)) == std::future_status::ready) {
    const std::string err = fut.get();
    if (!err.empty()) log::warn("asking replica {} to shut down: {}", url, err);
  }
}

}  // namespace

void check_model_folders(const std::vector<serving::ModelSpec>& models) {
  for (const auto& m : models) {
    try {
      models::ModelFolder::resolve(m.base);
    } catch (const Error& e) {
      TESSERA_FAIL("--model ", m.name, "=", m.base, ": ", e.message());
    }
    // Adapter folders are checked at start-up too (the engine reads them when it loads).
    TESSERA_CHECK(m.adapter.empty() || std::filesystem::is_directory(m.adapter), "--model ", m.name,
                  "=", m.base, ":", m.adapter, ": the adapter is not a folder");
    for (const auto& [name, path] : m.loras) {
      TESSERA_CHECK(std::filesystem::is_directory(path), "--lora ", name, "=", path,
                    ": not a folder");
    }
  }
}

serving::ServingBackendLoader local_engine_loader(const EngineFlags& flags, int device) {
  return
      [flags, device](const serving::ModelSpec& spec) -> std::shared_ptr<serving::ServingBackend> {
        const std::string dir = models::ModelFolder::resolve(spec.base).dir();
        if (models::EncoderConfig::is_encoder_config(dir + "/config.json")) {
          return load_encoder(spec, dir, device);
        }
        engine::EngineConfig ec = engine_config(flags, spec.base, device);
        ec.loras = engine_loras(spec);
        auto core = std::make_unique<engine::EngineCore>(ec, nullptr, nullptr);
        auto tok = tokenizer_for(*core, flags);
        engine::EngineCore& ref = *core;
        auto defaults = generation_defaults(ref.model_dir(), flags.generation_config);
        auto backend = std::make_shared<EngineBackend>(
            std::move(core), ref, std::move(tok), adapter_lora_name(spec), std::move(defaults));
        backend->async().start();
        return backend;
      };
}

int run_serve_job(const ServeSetup& setup, const EngineFlags& flags, launch::World& world) {
  sharding::Communicator* wc = world.comm.get();
  const int world_size = world.size;
  const int rank = world.rank;
  int tp = 1, dp = 1;
  agreed(wc, [&] {
    TESSERA_CHECK(setup.models.size() == 1, "under mpirun tessera serve serves one --model, got ",
                  setup.models.size());
    TESSERA_CHECK(flags.tp >= 0 && flags.dp >= 0, "--tp and --dp must be >= 1, got --tp ", flags.tp,
                  " --dp ", flags.dp);
    tp = flags.tp > 0 ? flags.tp : (flags.dp > 0 ? world_size / flags.dp : world_size);
    dp = flags.dp > 0 ? flags.dp : world_size / std::max(tp, 1);
    TESSERA_CHECK(tp >= 1 && dp >= 1 && tp * dp == world_size, "--tp ", tp, " x --dp ", dp,
                  " needs ", tp * dp, " ranks, the job has ", world_size);
  });
  // The folder (rank 0 writes the built-in model first), then every rank's engine.
  std::string model_dir;
  agreed(wc, [&] {
    if (rank == 0) model_dir = models::ModelFolder::resolve(setup.models[0].base).dir();
    TESSERA_CHECK(
        rank != 0 || !models::EncoderConfig::is_encoder_config(model_dir + "/config.json"),
        "model '", setup.models[0].name,
        "' is an encoder: tessera serve runs encoders in one process (no mpirun); "
        "tessera embed runs them tensor-parallel");
  });
  agreed(wc, [&] {
    if (model_dir.empty()) model_dir = models::ModelFolder::resolve(setup.models[0].base).dir();
  });
  models::ModelConfig config;
  int dcp = 1;
  agreed(wc, [&] {
    config = models::ModelConfig::from_file(model_dir + "/config.json");
    dcp = config.decode_context_parallel(tp);
  });
  auto* mpi_world = dynamic_cast<sharding::MpiCommunicator*>(wc);
  TESSERA_CHECK(mpi_world != nullptr, "tessera serve under mpirun needs the MPI world");
  auto groups = sharding::make_process_groups(*mpi_world, tp, 1);
  std::unique_ptr<sharding::Communicator> model_tp, dcp_comm;
  const auto factory = sharding::group_factory(*mpi_world, world.device);
  if (world.device >= 0)
    model_tp = sharding::make_process_groups(world_size, rank, tp, 1, factory).tp;
  if (dcp > 1) dcp_comm = factory(rank / dcp, rank, "dcp");
  sharding::Communicator* model_comm = model_tp ? model_tp.get() : groups.tp.get();
  std::unique_ptr<engine::EngineCore> core;
  agreed(wc, [&] {
    engine::EngineConfig ec = engine_config(flags, model_dir, world.device);
    ec.loras = engine_loras(setup.models[0]);
    core = std::make_unique<engine::EngineCore>(ec, model_comm, dcp_comm.get(), groups.tp.get());
  });
  const bool leader = core->leader();

  serving::install_termination_handler();  // before any thread starts (they inherit the mask)

  // A token for rank 0's router to stop the other replicas with (dp > 1).
  std::string token;
  if (dp > 1) {
    if (rank == 0) {
      std::random_device rd;
      for (int i = 0; i < 4; ++i) token += std::to_string(rd());
    }
    token = all_gather_text(*wc, token)[0];
  }

  std::shared_ptr<EngineBackend> backend;
  std::unique_ptr<serving::IoRuntime> io;
  std::unique_ptr<serving::ApiServer> server;
  std::string my_url;
  agreed(wc, [&] {
    if (!leader) return;
    backend = std::make_shared<EngineBackend>(
        nullptr, *core, tokenizer_for(*core, flags), adapter_lora_name(setup.models[0]),
        generation_defaults(core->model_dir(), flags.generation_config));
    io = std::make_unique<serving::IoRuntime>(setup.io_threads, 2);
    serving::HttpServerOptions http = setup.http;
    serving::ApiServerOptions api = setup.api;
    if (dp > 1) {  // a replica behind rank 0's router
      http.host = "127.0.0.1";
      http.port = 0;
      api.shutdown_token = token;
      api.on_shutdown_request = [] { serving::request_termination(); };
    }
    auto b = backend;
    server = std::make_unique<serving::ApiServer>(
        *io, http, api, setup.models, 1,
        [b](const serving::ModelSpec&) -> std::shared_ptr<serving::ServingBackend> { return b; });
    server->start();
    my_url = "http://127.0.0.1:" + std::to_string(server->port());
  });
  // Rank 0 learns the replicas' addresses (replicas on another node would need a routable bind).
  std::vector<std::string> urls;
  if (dp > 1) {
    const json mine = {{"url", my_url}, {"host", world.hostname}};
    std::string root_host;
    for (const auto& text : all_gather_text(*wc, mine.dump())) {
      const json j = json::parse(text);
      if (root_host.empty()) root_host = j["host"].get<std::string>();
      if (j["url"].get<std::string>().empty()) continue;
      if (j["host"].get<std::string>() != root_host) {
        throw CollectiveError("tessera serve --dp: replica leaders must share rank 0's node (" +
                                  root_host + "), one is on " + j["host"].get<std::string>() +
                                  "; run one job per node behind `tessera router`",
                              __FILE__, __LINE__);
      }
      urls.push_back(j["url"].get<std::string>());
    }
  }
  if (!leader) {
    // SIGTERM comes two ways. SLURM's scancel (or a batch scheduler's time limit) sends it to every
    // task: the leader drains its requests, still sending plans, and then releases the group, so a
    // follower keeps serving. The launcher also ends a job whose rank died with SIGTERM: then no
    // plan or ping comes any more (an idle leader pings at least every `ping_every`), and the
    // follower reports the collective it is blocked in (the watchdog's signal report) and exits,
    // rather than when its watchdog fires TESSERA_COMM_TIMEOUT later.
    const auto timeout = sharding::Watchdog::global().timeout();
    const auto ping_every = std::clamp<std::chrono::milliseconds>(
        timeout / 4, std::chrono::milliseconds(10), std::chrono::milliseconds(4000));
    std::thread([received = core->received_counter(),
                 grace = 2 * ping_every + std::chrono::seconds(1)] {
      const int sig = serving::wait_for_termination_signal();
      for (uint64_t seen = received->load();;) {
        std::this_thread::sleep_for(grace);
        const uint64_t now = received->load();
        if (now == seen) break;  // nothing from the leader for two ping intervals
        seen = now;
      }
      struct sigaction dfl {};
      dfl.sa_handler = SIG_DFL;
      sigaction(SIGTERM, &dfl, nullptr);
      sigaction(SIGINT, &dfl, nullptr);
      sharding::Watchdog::install_signal_report();
      sigset_t set;
      sigemptyset(&set);
      sigaddset(&set, sig);
      pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
      raise(sig);  // on this thread: the report, then exit 128 + sig
    }).detach();
    core->serve();  // until the leader releases the group
    return 0;
  }

  std::unique_ptr<serving::Router> router;
  if (rank == 0 && dp > 1) {
    serving::RouterOptions ro = setup.router;
    ro.backends = urls;
    ro.api_keys = setup.api.api_keys;
    router = std::make_unique<serving::Router>(*io, setup.http, ro);
    router->start();
  }
  std::thread signals([&] {
    const int sig = serving::wait_for_termination_signal();
    if (rank == 0) {
      const size_t n = router ? router->requests_in_flight() : server->http().active_exchanges();
      announce_shutdown("tessera serve", sig, n, setup.shutdown_timeout);
    }
    if (router) {
      router->shutdown(setup.shutdown_timeout);
      for (size_t r = 1; r < urls.size(); ++r) {
        ask_replica_to_stop(*io, urls[r], token, std::chrono::milliseconds(2000));
      }
    }
    server->shutdown(setup.shutdown_timeout);
    backend->close();  // ends the engine loop on the main thread
  });
  io->start();
  if (rank == 0) {
    const int port = router ? router->port() : server->port();
    std::printf("tessera serve: listening on http://%s:%d (model %s, tp %d, dp %d, pid %d)\n",
                setup.http.host.c_str(), port, setup.models[0].name.c_str(), tp, dp,
                static_cast<int>(getpid()));
    std::fflush(stdout);
  }
  std::exception_ptr failure;
  try {
    backend->async().run();  // the engine loop, until close()
  } catch (...) {
    failure = std::current_exception();
    serving::request_termination(serving::kEngineFailed);
  }
  signals.join();
  io->stop();
  if (failure) std::rethrow_exception(failure);
  return 0;
}

}  // namespace tessera::cli
