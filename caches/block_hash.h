// Chained hashes of full KV blocks for prefix caching: the hash of block i covers its parent's
// hash, its tokens and the request's extra keys (LoRA adapter, cache salt), so equal hashes mean
// equal prefixes, not just equal blocks. 64-bit, not cryptographic: a collision between two live
// prefixes has probability ~n^2 / 2^64 (n cached blocks), negligible below billions of blocks; use
// a cache salt to keep tenants apart. Torch-free.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace tessera::caches {

struct BlockHashExtra {
  uint64_t lora_id = 0;     // adapter the KV was computed with (0 = base model); every block
  uint64_t cache_salt = 0;  // per-tenant salt (0 = none); folded into the first block only
  bool operator==(const BlockHashExtra&) const = default;
};

// Hash of one full block given its parent's hash (0 for the first block).
uint64_t hash_block(uint64_t parent, std::span<const int32_t> tokens, const BlockHashExtra& extra,
                    bool first_block);

// Extends `hashes` (the hashes of the first hashes.size() blocks of `tokens`) to every full block.
void extend_block_hashes(std::vector<uint64_t>& hashes, std::span<const int32_t> tokens,
                         int64_t block_size, const BlockHashExtra& extra);

// The pool key of a block hash in cache group `group`: groups hold different layers' K/V, so the
// same tokens give different blocks per group.
uint64_t group_key(uint64_t block_hash, int32_t group);

}  // namespace tessera::caches
