// Greedy text generation on one tensor-parallel group: the plain-data entry point behind
// `tessera generate`. Torch stays inside generate.cpp so callers (the CLI) compile cheaply.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tessera::sharding {
class Communicator;
}

namespace tessera::engine {

struct GenerateRequest {
  std::string model = "tiny";  // "tiny" or a Hugging Face model folder
  std::string prompt;
  int64_t max_tokens = 32;
  int64_t prefill_chunk = 256;  // prompt tokens per forward pass (chunked prefill)
  bool stop_at_eos = true;
};

struct GenerateResult {
  std::string model_dir;
  int tp_size = 1;
  std::vector<int64_t> prompt_ids;
  std::vector<int64_t> output_ids;
  std::string text;  // decoded output bytes
  double load_ms = 0, prefill_ms = 0, decode_ms = 0;
  int64_t kv_cache_bytes = 0;     // this rank's
  int64_t weight_bytes_read = 0;  // this rank's
};

// Throws tessera::Error on bad input. Must be called by every rank of `comm` (null: one rank);
// failures while loading are agreed on across ranks first, so all ranks throw together rather
// than some waiting forever in a collective.
GenerateResult generate(const GenerateRequest& request, sharding::Communicator* comm);

}  // namespace tessera::engine
