// The engine's sparse decode option (`tessera generate --sparse-decode cluster --sparse-budget N`):
// decode steps of long sequences attend, on full-attention layers, to at most `budget` tokens per
// (sequence, KV head) chosen by kernels/sparse_decode/sparse_select.h (cluster or Quest
// selection, always with the attention sinks and a recent window) instead of the whole context.
// Torch-free.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/sparse_decode/sparse_select.h"

namespace tessera::models {

struct SparseDecodeConfig {
  std::string method;   // "" = off; "cluster", "quest", "meanstd" or "sink_window"
  int64_t budget = 0;   // tokens per (sequence, kv head), sinks and window included
  int64_t sinks = 4;    // first tokens, always attended
  int64_t window = 64;  // most recent tokens, always attended
  // Decode sparsely once a sequence holds more than this many tokens; -1 = the budget (shorter
  // contexts fit the budget whole, so dense decode reads the same tokens).
  int64_t min_context = -1;

  bool enabled() const { return !method.empty(); }
  int64_t threshold() const { return min_context >= 0 ? min_context : budget; }

  // Throws tessera::Error naming the option and value (as the CLI spells it): an unknown method,
  // a budget <= 0, negative sinks / window / min_context, a budget below sinks + window +
  // block_size (the forced tokens must leave room to choose).
  void validate(int64_t block_size) const;
  // The selection config of one layer's KV heads (validated).
  kernels::SparseSelectConfig select_config(int head_dim, int group, int page_tokens,
                                            float scale) const;
};

}  // namespace tessera::models
