// Synthetic query / key / value families for `tessera bench sparse`, each exercising something the
// sparse-attention literature reports about real attention. Every family is built on a topic model
// (keys = alpha * topic direction + noise; a query looks for one topic; values carry a per-topic
// mean) written straight into a paged pool in random block order:
//   sinks      the first 4 tokens have huge keys along a direction every query shares (~40% mass)
//   rope       keys and queries rotated by RoPE at their positions (theta 10000, NeoX pairs)
//   outliers   keys with a large non-zero mean and 4 outlier channels (value ~ 20 +- 5) that the
//              queries also read
//   ood        the keys' variance sits mostly in channels the queries never use (queries out of the
//              keys' distribution)
//   scattered  topics drawn per token: the tokens a query wants are spread across all pages
//   needles    the query's topic is absent except for 4 strong needles at random depths
//   flat       small queries: near-uniform (aggregation-like) attention
// The other families draw topics in runs of 32-512 tokens (documents, paragraphs). Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/paged/paged_kv.h"

namespace tessera::bench {

const std::vector<std::string>& sparse_family_names();

struct SparseFamilyShape {
  int64_t tokens = 8192;  // context length (positions 0..tokens-1), queries sit at `tokens`
  int kv_heads = 4;
  int group = 4;  // query heads per kv head
  int head_dim = 128;
  int block_size = 16;
  int queries = 4;        // decode queries per kv head (each looks for its own topic)
  int query_samples = 0;  // extra queries from the same distribution (prefill-like statistics)
  uint64_t seed = 1;
};

struct SparseFamily {
  std::string name;
  SparseFamilyShape shape;
  // The paged pool: K / V [num_blocks, block_size, kv_heads, head_dim] fp32, block 0 null.
  std::vector<float> k_pages, v_pages;
  std::vector<int32_t> block_table;  // [blocks of the sequence]
  // Decode queries [queries, kv_heads * group, head_dim] and the extra samples
  // [query_samples, kv_heads * group, head_dim].
  std::vector<float> q, q_samples;
  // Needle positions per (query, kv head): [queries * kv_heads][needles] (needles family).
  std::vector<std::vector<int32_t>> needles;

  kernels::PagedKv kv() const;
  const float* key(int64_t pos, int head) const;
  const float* value(int64_t pos, int head) const;
  int num_q_heads() const { return shape.kv_heads * shape.group; }
};

SparseFamily make_sparse_family(const std::string& name, const SparseFamilyShape& shape);

}  // namespace tessera::bench
