#include "caches/block_hash.h"

namespace tessera::caches {
namespace {

// splitmix64 finaliser: a full-avalanche 64-bit mix.
inline uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

inline uint64_t combine(uint64_t h, uint64_t v) { return mix(h ^ mix(v)); }

}  // namespace

uint64_t hash_block(uint64_t parent, std::span<const int32_t> tokens, const BlockHashExtra& extra,
                    bool first_block) {
  uint64_t h = combine(0x7e55e7a0ull, parent);
  h = combine(h, tokens.size());
  // Two tokens per mixing round (the length above keeps [a] and [0, a] apart): half the serial
  // multiply chain of one round per token.
  size_t i = 0;
  for (; i + 1 < tokens.size(); i += 2) {
    h = combine(h, (uint64_t{static_cast<uint32_t>(tokens[i])} << 32) |
                       static_cast<uint32_t>(tokens[i + 1]));
  }
  if (i < tokens.size()) h = combine(h, static_cast<uint32_t>(tokens[i]));
  h = combine(h, extra.lora_id);
  if (first_block) h = combine(h, extra.cache_salt);
  return h;
}

void extend_block_hashes(std::vector<uint64_t>& hashes, std::span<const int32_t> tokens,
                         int64_t block_size, const BlockHashExtra& extra) {
  const size_t full = tokens.size() / static_cast<size_t>(block_size);
  for (size_t i = hashes.size(); i < full; ++i) {
    const uint64_t parent = i == 0 ? 0 : hashes[i - 1];
    hashes.push_back(hash_block(parent, tokens.subspan(i * block_size, block_size), extra, i == 0));
  }
}

uint64_t group_key(uint64_t block_hash, int32_t group) {
  return group == 0 ? block_hash : combine(block_hash, 0xc0ffee00ull + group);
}

}  // namespace tessera::caches
