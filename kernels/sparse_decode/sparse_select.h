// Token selection for sparse decode: which cached tokens a decode step attends to, per sequence
// and KV head (shared by the head's GQA query group), within a token budget. Every method always
// takes the attention sinks (first tokens) and a recent window; the rest of the budget goes to:
//   cluster      keys of full pages, centred (and, given query samples, mapped into the metric of
//                the queries' second moment, where distance is the expected error of q . k),
//                grouped by k-means (Euclidean by default, cosine on normalised keys as an option;
//                a quarter of the seeds farthest-first so isolated keys keep their own cluster)
//                into clusters: centroid = mean raw key, mean squared radius, member list.
//                Clustering is incremental: pages are grouped in chunks of chunk_pages; a complete
//                chunk is clustered once and never touched again; the open chunk is re-clustered
//                when its page count reaches a power of two, and pages in between join the nearest
//                centre of its last clustering. At decode the queries score centroids (plus a
//                radius bonus) and whole clusters are taken in order of estimated attention mass
//                per token until the budget is met (the last one partly).
//   quest        Quest: per page channel-wise min / max of the keys; a page's score is the upper
//                bound sum_d max(q_d min_d, q_d max_d); whole pages in score order.
//   meanstd      per page channel-wise mean and variance; score = the log of the expected
//                softmax mass of a Gaussian page, scale q.mu + scale^2/2 sum_d q_d^2 sigma_d^2.
//   sink_window  nothing but the sinks and the most recent tokens.
// Cluster and page metadata are kept at equal bytes by default (SparseSelectConfig::
// clusters_per_page). Torch-free; the lists feed kernels/sparse_decode/sparse_attention.h.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/paged/paged_kv.h"
#include "kernels/sparse_decode/key_kmeans.h"

namespace tessera::kernels {

enum class SparseMethod { kCluster, kQuest, kMeanStd, kSinkWindow };

const char* sparse_method_name(SparseMethod m);
// "cluster", "quest", "meanstd", "sink_window"; anything else is an error naming the valid ones.
SparseMethod parse_sparse_method(std::string_view name);

struct SparseSelectConfig {
  SparseMethod method = SparseMethod::kCluster;
  int64_t budget = 2048;  // tokens per (sequence, kv head), sinks and window included
  int64_t sinks = 4;      // first tokens, always attended
  int64_t window = 64;    // most recent tokens, always attended (plus any not-yet-indexed ones)
  int page_tokens = 16;   // metadata granularity: the paged pool's block size
  int head_dim = 0;       // of the keys
  int group = 1;          // query heads per kv head (they share one selection)
  float scale = 0.0f;     // softmax scale of the scores; 0 = 1 / sqrt(head_dim)
  // Cluster method.
  int chunk_pages = 64;            // pages clustered together (64 x 16 = 1,024 tokens)
  double clusters_per_page = 0.0;  // 0 = equal metadata bytes with Quest (equal_bytes_...)
  int kmeans_iters = 4;            // Lloyd iterations (8 gave the benchmark the same recall)
  // The defaults below won on the benchmark's families (docs/sparse_decode.md, `tessera bench
  // sparse` ablation): Euclidean k-means in the query metric, a quarter of the seeds
  // farthest-first, the radius bonus.
  bool radius_bonus = true;  // add scale^2 |q|^2 r^2 / (2 d): a cluster's spread raises its mass
  bool spherical = false;    // true: cluster normalised keys (cosine k-means, as in ClusterKV)
  double farthest_seeds = 0.25;  // fraction of each chunk's k-means seeds picked farthest-first
  uint64_t seed = 0;

  // Throws tessera::Error naming the field and value: budget <= 0, budget below sinks + window +
  // one page (the forced tokens must leave room to choose), head_dim / group / page_tokens /
  // chunk_pages / kmeans_iters not positive, negative sinks / window / clusters_per_page.
  void validate() const;
  float softmax_scale() const;
  // Clusters per page that give the cluster index the bytes of Quest's per-page min / max (two
  // fp32 vectors): each cluster costs its centroid + 16 bytes, each member 4 bytes.
  static double equal_bytes_clusters_per_page(int head_dim, int page_tokens);
  double effective_clusters_per_page() const;
};

// Key rows of one kv head read from a paged pool (any page format, decoded to fp32). A contiguous
// [batch, slots, heads, dim] cache is the special case of one block of `slots` tokens per row.
struct KeyRows {
  PagedKv kv;
  const int32_t* block_table = nullptr;  // this sequence's row of the block table
  int head = 0;
  void read(int64_t pos, float* out) const;  // out [head_dim_k]
};

// The selection state of one (sequence, kv head).
class SparseHeadIndex {
 public:
  SparseHeadIndex(const SparseSelectConfig& config, int head);

  // Adds the pages of positions [0, num_tokens) that are full and not indexed yet (num_tokens never
  // decreases). Cluster method: see the header comment (complete chunks once, the open one at
  // powers of two, assignment in between).
  void update(const KeyRows& keys, int64_t num_tokens);
  // A new token budget (validated as in the config); the metadata does not depend on it.
  void set_budget(int64_t budget);
  // Positions [0, indexed_tokens()) have metadata (whole pages).
  int64_t indexed_tokens() const { return indexed_pages_ * config_.page_tokens; }

  // Tokens for queries q [group, head_dim] (rows q_stride apart) over positions [0, num_tokens):
  // all of them when num_tokens <= budget, else exactly `budget`: sinks, the chosen ones, then
  // the window (which always covers the positions not yet indexed). Writes positions to out
  // (capacity >= min(budget, num_tokens)); returns the count. No position repeats.
  int64_t select(const float* q, int64_t q_stride, int64_t num_tokens, int32_t* out) const;
  // The general form (a rank of a sequence-sharded cache: its own sinks and window, in local
  // positions): [0, sink_end), up to `middle_budget` chosen from [sink_end, window_begin), then
  // [window_begin, num_tokens). window_begin is lowered to indexed_tokens() if it lies above.
  int64_t select_range(const float* q, int64_t q_stride, int64_t num_tokens, int64_t sink_end,
                       int64_t window_begin, int64_t middle_budget, int32_t* out) const;

  // Query samples (e.g. the prefill's queries of this head's group), rows q_stride apart: later
  // clustering measures key distances in the metric of their second moment (see KMeansOptions).
  void set_query_samples(const float* q, int64_t rows, int64_t q_stride);
  bool has_query_metric() const { return !metric_.empty(); }

  // Re-clusters every indexed token at once (one k-means over all full pages, as many clusters
  // as the chunks hold together): the from-scratch reference of incremental clustering.
  void recluster_globally(const KeyRows& keys);

  // Bytes of the selection metadata (centroids, radii, offsets, member lists or page vectors).
  int64_t metadata_bytes() const;
  int64_t num_units() const;  // clusters or pages
  // Cluster c's members (positions, ascending); for tests.
  std::span<const int32_t> cluster_members(int64_t c) const;

 private:
  void index_pages_quest_meanstd(const KeyRows& keys, int64_t first_page, int64_t end_page);
  KMeansOptions kmeans_options(int64_t pages, int64_t first_token) const;
  // k-means over pages [first_page, end_page): they become the open chunk (sealed by the caller
  // when complete).
  void cluster_chunk(const KeyRows& keys, int64_t first_page, int64_t end_page);
  // Pages joining the open chunk: each key to the nearest centre of its last k-means.
  void assign_pages(const KeyRows& keys, int64_t first_page, int64_t end_page);
  void add_to_open(const float* x, int64_t first, int n, const int32_t* assign);
  void publish_open();

  SparseSelectConfig config_;
  int head_ = 0;
  int64_t indexed_pages_ = 0;
  // Pages: [pages, 2, head_dim]: (min, max) for quest, (mean, variance) for meanstd.
  std::vector<float> page_stats_;
  // Clusters, in chunk order; those of the open chunk (pages from sealed_pages_) at the tail.
  int64_t sealed_pages_ = 0;
  int64_t sealed_clusters_ = 0;
  std::vector<float> centroids_;         // [clusters, head_dim]
  std::vector<float> radius2_;           // [clusters]: mean squared distance of members
  std::vector<int32_t> member_offsets_;  // [clusters + 1]
  std::vector<int32_t> members_;         // positions
  std::vector<int32_t> min_pos_, max_pos_;
  std::vector<float> metric_;  // [head_dim, head_dim]: Cholesky factor of the query second moment
  // Build state of the open chunk (not read by selection): its k-means model and running sums.
  struct OpenChunk {
    int64_t first_token = 0;
    int64_t pages = 0;            // pages of the open chunk indexed
    int64_t clustered_pages = 0;  // pages its k-means ran on (a power of two)
    KMeansResult model;
    std::vector<std::vector<int32_t>> members;  // per cluster, ascending positions
    std::vector<float> sum;                     // [clusters, head_dim] raw key sums
    std::vector<float> sumsq;                   // [clusters] sums of |x|^2
  } open_;
};

// The selection state of one sequence: one SparseHeadIndex per kv head.
class SparseSequenceIndex {
 public:
  SparseSequenceIndex(const SparseSelectConfig& config, int num_kv_heads);
  const SparseSelectConfig& config() const { return config_; }
  int num_kv_heads() const { return static_cast<int>(heads_.size()); }
  SparseHeadIndex& head(int kh) { return heads_[static_cast<size_t>(kh)]; }
  const SparseHeadIndex& head(int kh) const { return heads_[static_cast<size_t>(kh)]; }

  void set_budget(int64_t budget);
  // q [rows, num_q_heads, head_dim] (strides q_stride): query samples for every kv head's metric.
  void set_query_samples(const float* q, int64_t rows, const int64_t q_stride[2]);
  // Indexes newly full pages of every kv head (keys read from the pool through block_table).
  void update(const PagedKv& kv, const int32_t* block_table, int64_t num_tokens);
  // q [num_q_heads = num_kv_heads * group, head_dim], rows q_stride apart. Writes the lists of
  // every kv head to idx [num_kv_heads, max_entries] and their lengths to counts [num_kv_heads].
  void select(const float* q, int64_t q_stride, int64_t num_tokens, int32_t* idx, int32_t* counts,
              int64_t max_entries) const;
  int64_t metadata_bytes() const;

 private:
  SparseSelectConfig config_;
  std::vector<SparseHeadIndex> heads_;
};

// One rank's part of a selection over a KV cache sharded by sequence: blocks of block_tokens
// positions dealt round-robin to `world` ranks (models::SequencePlacement in
// runtime/models/layers/sequence_sharded_kv.h: a rank's local index i is position
// ((i / block_tokens) * world + rank) * block_tokens + i % block_tokens). Each rank selects over
// its own tokens with SparseHeadIndex::select_range (local positions) and the partial attention
// results merge exactly by LSE. The global sinks and window stay forced; the chosen middle is split
// over the ranks in proportion to the middle tokens each holds, so the ranks together take the
// global budget (plus at most page_tokens - 1 not yet indexed tokens per rank). Every rank computes
// every rank's share identically: no communication.
struct SparseShard {
  int64_t local_tokens = 0;   // tokens this rank holds among positions [0, global_tokens)
  int64_t sink_end = 0;       // local [0, sink_end): global sinks
  int64_t window_begin = 0;   // local [window_begin, local_tokens): the global window
  int64_t middle_budget = 0;  // this rank's share of the chosen tokens
};
SparseShard sparse_shard(const SparseSelectConfig& config, int64_t global_tokens,
                         int64_t block_tokens, int world, int rank);

// The checks of sparse_select_batch (same kv heads and group, lists long enough, indexes up to
// date), for callers that select inside their own parallel loop.
void sparse_select_check(std::span<const SparseSequenceIndex* const> seqs,
                         const int64_t* num_tokens, int64_t max_entries);

// One decode step's selection for a batch, (sequence, kv head) pairs in parallel: q [num_seqs,
// num_q_heads, head_dim] (strides q_stride), num_tokens [num_seqs]; writes idx [num_seqs,
// num_kv_heads, max_entries] and counts [num_seqs, num_kv_heads], the layout of
// SparseDecodeView.
void sparse_select_batch(std::span<const SparseSequenceIndex* const> seqs, const float* q,
                         const int64_t q_stride[2], const int64_t* num_tokens, int32_t* idx,
                         int32_t* counts, int64_t max_entries);

}  // namespace tessera::kernels
