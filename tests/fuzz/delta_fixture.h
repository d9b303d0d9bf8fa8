// The fixed base checkpoint the delta fuzz target applies its inputs to, and the tuned
// checkpoints whose deltas (against that base) are its seeds: small, deterministic, every
// encoding (xor, diff, raw for a new tensor, int8) and a sharded tuned checkpoint.
#pragma once

#include <string>
#include <vector>

namespace tessera::fuzz {

// Writes the base as `dir`/model.safetensors (dir created); returns that file's path.
std::string write_delta_base(const std::string& dir);

struct DeltaSeed {
  std::string name;   // the seed's file name
  std::string tuned;  // the tuned checkpoint (file or folder) it was made from
  bool lossy = false;
  bool diff = false;
};

// Writes the tuned checkpoints under `dir` and returns how to make each seed from them.
std::vector<DeltaSeed> write_delta_tuned(const std::string& dir);

}  // namespace tessera::fuzz
