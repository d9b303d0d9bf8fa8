// The engine behind `tessera serve`: the flags that size it, a loader that builds one engine per
// model in a single process, and the job that serves one model under mpirun (tensor-parallel
// groups, and data-parallel replicas behind the cache-aware router on rank 0). Torch stays in
// cmd_serve_engine.cpp; the HTTP side is runtime/serving.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "launch/bootstrap.h"
#include "runtime/serving/api_server.h"
#include "runtime/serving/router.h"

namespace tessera::cli {

struct EngineFlags {
  int tp = 0;  // ranks per replica; 0 = world / dp
  int dp = 0;  // replicas; 0 = world / tp
  int64_t max_num_seqs = 256;
  int64_t max_num_batched_tokens = 2048;
  int64_t max_model_len = 0;
  int64_t block_size = 16;
  std::string kv_cache_memory;  // "" = the engine's default; K/M/G suffixes
  std::string kv_cache_dtype = "float32";
  double kv_cache_fraction = 0.9;
  bool no_prefix_caching = false;
  int64_t seed = 0;  // the sampler's stream for requests without a seed
  // --chat-template: a file, or the template itself (vLLM's flag); "" = each folder's own.
  std::string chat_template;
  // --generation-config: "auto" (a request's missing sampling fields from the folder's
  // generation_config.json, as vLLM) or "none" (the API's defaults).
  std::string generation_config = "auto";
};

// The Jinja source --chat-template names: the file's text when it is a file, the value itself when
// it holds "{{" or "{%", else an error naming the flag; the template must parse.
std::string chat_template_source(const std::string& flag_value);

// Checks every engine flag on its own (ranges, sizes, dtype names), so that a wrong value is one
// line at start-up, not a server whose model never loads; throws tessera::Error naming the flag.
void check_engine_flags(const EngineFlags& flags);

// One process (no mpirun): each --model gets its own engine, built on the blocking pool when the
// backend cache loads it, its loop on a thread of its own; close() stops it and frees it.
serving::ServingBackendLoader local_engine_loader(const EngineFlags& flags, int device);

// Opens every model's folder ("tiny" is written on first use) so that a wrong path is one line at
// start-up, not a server that answers 503; throws tessera::Error naming the flag.
void check_model_folders(const std::vector<serving::ModelSpec>& models);

// Everything `tessera serve` needs to run its servers, whatever the launch.
struct ServeSetup {
  std::vector<serving::ModelSpec> models;
  serving::HttpServerOptions http;
  serving::ApiServerOptions api;
  serving::RouterOptions router;  // policy thresholds (dp > 1)
  int max_loaded_models = 1;
  std::chrono::milliseconds shutdown_timeout{30000};
  int io_threads = 2;
};

// Under mpirun (collective over the world): one model, dp replicas of tp ranks. Rank 0 answers
// HTTP; with dp > 1 each replica's leader serves on 127.0.0.1 (ephemeral port) behind rank 0's
// router. Returns the process exit code.
int run_serve_job(const ServeSetup& setup, const EngineFlags& flags, launch::World& world);

// The line a server or router prints to stdout when a signal (or an engine failure, or a request
// to stop) starts its shutdown, next to its "listening" line: "tessera serve: SIGTERM: finishing 1
// request in flight (at most 30 s)"; `signal` is what wait_for_termination_signal returned.
void announce_shutdown(const char* program, int signal, size_t in_flight,
                       std::chrono::milliseconds timeout);

}  // namespace tessera::cli
