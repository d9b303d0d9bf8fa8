// A deterministic stand-in for the model runner, for scheduler tests. It keeps what a real runner
// keeps — a persistent batch of slots, one block table per slot and KV cache group rebuilt only
// from the plans' deltas, and paged "KV" storage — and computes with it: the KV entry of position
// p is a hash of the entry at p - 1 (read through the block table, as attention reads the past)
// and the token at p, seeded by the LoRA name, so it stands for everything the prefix computed. A
// sampling row's token is a function of its last entry. Wrong tokens, positions, block tables,
// prefix hits or reused blocks therefore change the generated tokens. `reference_generate` gives
// the tokens a request must produce, computed directly from its prompt without any cache.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "caches/block_pool.h"
#include "caches/kv_cache_manager.h"
#include "runtime/scheduler/scheduler.h"

namespace tessera::scheduler::testing {

inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
inline uint64_t kv_seed(const std::string& lora) {
  uint64_t h = 0x5eed;
  for (unsigned char c : lora) h = mix64(h ^ c);
  return h;
}
// The KV entry of a position from the previous one and the token there.
inline uint64_t kv_entry(uint64_t prev, int32_t token) {
  return mix64(prev ^ (static_cast<uint64_t>(static_cast<uint32_t>(token)) << 1));
}
inline int32_t next_token(uint64_t last_entry, int32_t vocab) {
  return static_cast<int32_t>((mix64(last_entry) >> 17) % static_cast<uint64_t>(vocab));
}

// What a request generates with this fake model under the scheduler's stop rules, computed
// straight from the prompt. Returns the tokens and the finish reason.
struct Reference {
  std::vector<int32_t> tokens;
  FinishReason reason = FinishReason::kNone;
};
inline Reference reference_generate(const Request& r, const SchedulerConfig& c, int32_t vocab) {
  Reference ref;
  uint64_t h = kv_seed(r.lora);
  for (int32_t t : r.prompt_ids) h = kv_entry(h, t);
  auto has = [](const std::vector<int32_t>& v, int32_t x) {
    return std::find(v.begin(), v.end(), x) != v.end();
  };
  while (true) {
    const int32_t tok = next_token(h, vocab);
    ref.tokens.push_back(tok);
    const auto n = static_cast<int64_t>(ref.tokens.size());
    if (n >= r.params.min_tokens && (has(r.params.stop_token_ids, tok) ||
                                     (!r.params.ignore_eos && has(c.eos_token_ids, tok)))) {
      ref.reason = FinishReason::kStop;
      return ref;
    }
    if (n >= r.params.max_tokens || r.num_prompt_tokens() + n >= c.max_model_len) {
      ref.reason = FinishReason::kLength;
      return ref;
    }
    h = kv_entry(h, tok);
  }
}

class FakeRunner {
 public:
  // Group 0 must be full attention (the runner reads the past through it); sliding-window and
  // local-chunk groups are checked to hold every position their next query can see.
  FakeRunner(const caches::KVCacheManager& kv, int64_t max_slots, int32_t vocab)
      : block_size_(kv.block_size()),
        num_groups_(kv.num_groups()),
        vocab_(vocab),
        storage_(static_cast<size_t>(kv.pool().num_blocks() * kv.block_size()), 0),
        written_(storage_.size(), false),
        slots_(max_slots) {
    for (const auto& g : kv.config().groups) {
      const auto& spec = *g.spec;
      attention_.push_back(!spec.is_state());
      if (spec.kind() == caches::SpecKind::kSlidingWindow) {
        windows_.push_back(static_cast<const caches::SlidingWindowSpec&>(spec).window());
      } else if (spec.kind() == caches::SpecKind::kChunkedLocal) {
        windows_.push_back(
            -static_cast<const caches::ChunkedLocalAttentionSpec&>(spec).chunk_size());
      } else {
        windows_.push_back(0);
      }
    }
    for (auto& s : slots_) s.tables.resize(num_groups_);
  }

  const std::vector<int32_t>& table(int32_t slot, int32_t group) const {
    return slots_.at(slot).tables.at(group);
  }
  bool live(int32_t slot) const { return slots_.at(slot).live; }

  // Runs the plan (round-tripped through bytes, as the TP group receives it) and returns the
  // sampled tokens. Fails the test on anything a real runner could not execute.
  SampledTokens execute(const StepPlan& sent) {
    const StepPlan plan = StepPlan::decode(sent.encode());
    EXPECT_TRUE(plan == sent) << "plan changed in the byte round trip at step " << sent.step;
    plan.check_bounds(static_cast<int64_t>(slots_.size()),
                      static_cast<int64_t>(written_.size() / block_size_));
    for (const ReleasedSeq& r : plan.released) {
      Slot& s = slots_.at(r.slot);
      EXPECT_TRUE(s.live && s.seq == r.seq) << "released slot " << r.slot << " holds seq " << s.seq;
      s.live = false;
    }
    SampledTokens out;
    out.step = plan.step;
    for (int64_t i = 0; i < plan.num_rows(); ++i) {
      const ScheduledSeq& row = plan.seqs[i];
      Slot& s = slots_.at(row.slot);
      if (row.is_new) {
        EXPECT_FALSE(s.live) << "new row in live slot " << row.slot;
        s.live = true;
        s.seq = row.seq;
        s.lora = plan.new_seqs.at(row.new_index).lora;
        EXPECT_EQ(plan.new_seqs.at(row.new_index).row, i);
        for (auto& t : s.tables) t.clear();
      } else {
        EXPECT_TRUE(s.live && s.seq == row.seq)
            << "row of seq " << row.seq << " in slot " << row.slot << " holding " << s.seq;
      }
      for (int32_t g = 0; g < num_groups_; ++g) plan.apply_block_table(i, g, s.tables[g]);
      auto toks = plan.tokens(i);
      uint64_t prev = row.start_pos == 0 ? kv_seed(s.lora) : read(s, row.start_pos - 1, 0);
      for (int64_t k = 0; k < row.num_tokens; ++k) {
        const int64_t pos = row.start_pos + k;
        // Attention reads the visible past: check every group still holds it, intact.
        for (int32_t g = 1; g < num_groups_; ++g) {
          if (!attention_[g]) continue;
          for (int64_t q = first_visible(g, pos); q < pos; ++q) {
            EXPECT_EQ(read(s, q, g), read(s, q, 0))
                << "group " << g << " position " << q << " of seq " << row.seq;
          }
        }
        prev = kv_entry(prev, toks[k]);
        for (int32_t g = 0; g < num_groups_; ++g) {
          if (attention_[g]) write(s, pos, g, prev);
        }
      }
      if (row.sample) out.token_ids.push_back(next_token(prev, vocab_));
    }
    EXPECT_EQ(static_cast<int64_t>(out.token_ids.size()), plan.num_sampled);
    return out;
  }

 private:
  struct Slot {
    bool live = false;
    int64_t seq = -1;
    std::string lora;
    std::vector<std::vector<int32_t>> tables;
  };
  int64_t first_visible(int32_t g, int64_t pos) const {
    const int64_t w = windows_[g];
    if (w > 0) return std::max<int64_t>(0, pos - w + 1);
    if (w < 0) return pos / -w * -w;
    return 0;
  }
  size_t index(const Slot& s, int64_t pos, int32_t g) const {
    const auto& t = s.tables[g];
    const int64_t b = pos / block_size_;
    EXPECT_LT(b, static_cast<int64_t>(t.size())) << "position " << pos << " past the table";
    if (b >= static_cast<int64_t>(t.size())) return 0;
    EXPECT_NE(t[b], caches::BlockPool::kNullBlock)
        << "position " << pos << " group " << g << " maps to the null block";
    return static_cast<size_t>(t[b] * block_size_ + pos % block_size_);
  }
  uint64_t read(const Slot& s, int64_t pos, int32_t g) {
    const size_t i = index(s, pos, g);
    EXPECT_TRUE(written_[i]) << "position " << pos << " group " << g << " read before written";
    return storage_[i];
  }
  void write(const Slot& s, int64_t pos, int32_t g, uint64_t v) {
    const size_t i = index(s, pos, g);
    storage_[i] = v;
    written_[i] = true;
  }

  int64_t block_size_;
  int32_t num_groups_;
  int32_t vocab_;
  std::vector<int64_t> windows_;
  std::vector<bool> attention_;    // false for state groups (one slot per sequence, no positions)
  std::vector<uint64_t> storage_;  // [num_blocks * block_size]
  std::vector<bool> written_;
  std::vector<Slot> slots_;
};

}  // namespace tessera::scheduler::testing
