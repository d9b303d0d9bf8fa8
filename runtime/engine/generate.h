// Offline generation over a whole job (`tessera generate`): the world splits into dp replicas of
// a tp-rank tensor-parallel group (decode context parallel inside a group when tp exceeds the KV
// heads), each replica runs its own engine (scheduler, runner, paged KV cache) on the prompts
// dealt to it round-robin, and world rank 0 gathers every result in prompt order. Prompts are
// tokenized and outputs decoded here. Torch stays inside generate.cpp so the CLI compiles
// cheaply.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "runtime/engine/engine_core.h"
#include "runtime/engine/llm.h"
#include "runtime/engine/prompt_file.h"

namespace tessera::sharding {
class Communicator;
}

namespace tessera::engine {

struct GenerateJob {
  EngineConfig engine;
  int tp = 0;  // ranks per replica; 0 = world size / dp
  int dp = 1;  // replicas
  std::vector<PromptSpec> prompts;
  // World rank 0, once every replica is loaded: the KV cache plan's start-up table.
  std::function<void(const std::string&)> on_ready;
  // World rank 0, as replica 0's requests finish.
  std::function<void(const Progress&)> progress;
};

struct GeneratedText {
  CompletedRequest result;
  std::string text;  // the decoded output
};

struct GenerateReport {
  std::string model_dir;
  int world = 1, tp = 1, dp = 1, dcp = 1;
  double load_s = 0;
  std::vector<GeneratedText> outputs;  // world rank 0: one per prompt, in prompt order
  GenerateSummary summary;             // world rank 0: summed over replicas (seconds: slowest)
  int64_t failed = 0;                  // every rank: requests that failed (bad input, NaN, ...)
  int64_t kv_blocks = 0;               // blocks of each replica's pool
  int64_t kv_bytes_per_rank = 0;
  int64_t weight_bytes_per_rank = 0;
};

// Collective over `world` (every rank calls it with the same job; null = one process). Throws
// CollectiveError (every rank together) on a failure while loading; a bad prompt fails alone
// (its output carries finish_reason "error").
GenerateReport run_generate(const GenerateJob& job, sharding::Communicator* world);

}  // namespace tessera::engine
