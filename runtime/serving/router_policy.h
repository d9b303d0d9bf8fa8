// The router's cache-aware policy, as SGLang's model gateway has it (policies/cache_aware.rs): an
// approximate radix tree over the request text records which worker saw which prefixes. When the
// loads are balanced, a request goes to the worker holding its longest prefix if that covers more
// than cache_threshold of the text, else to the worker with the smallest tree (the most room to
// cache; ties: the least loaded); when they are imbalanced (max - min > balance_abs_threshold and
// max > balance_rel_threshold * min) it goes to the least loaded. Every routed text is inserted
// under its worker; each worker's share of the tree is kept under max_chars_per_worker by dropping
// its least recently used leaves. A worker taken out loses its share, so one that comes back is
// the first choice for new texts.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace tessera::serving {

class PrefixTree {
 public:
  PrefixTree();
  ~PrefixTree();
  void insert(std::string_view text, int worker);
  struct Match {
    size_t chars = 0;  // length of the longest prefix of the text some allowed worker has seen
    int worker = -1;
  };
  // The allowed worker with the longest match (ties: the one that used it most recently).
  Match longest_match(std::string_view text, const std::vector<int>& allowed) const;
  void remove_worker(int worker);
  size_t worker_chars(int worker) const;
  void evict(int worker, size_t max_chars);  // least recently used leaves of that worker first
  size_t nodes() const;

 private:
  struct Node;
  std::unique_ptr<Node> root_;
  std::map<int, size_t> chars_;
  uint64_t clock_ = 0;
};

struct RouterPolicyConfig {
  double cache_threshold = 0.5;
  int64_t balance_abs_threshold = 32;
  double balance_rel_threshold = 1.1;
  size_t max_chars_per_worker = 1 << 22;
};

struct WorkerLoad {
  int id = 0;
  int64_t load = 0;  // requests in flight
};

class CacheAwarePolicy {
 public:
  explicit CacheAwarePolicy(RouterPolicyConfig config = {});
  struct Choice {
    int worker = -1;  // -1: no candidate
    bool by_cache = false;
    double match_rate = 0;
  };
  // Picks among `candidates` (the healthy workers not yet tried) and records the text under it.
  Choice select(std::string_view text, const std::vector<WorkerLoad>& candidates);
  void remove_worker(int worker);
  size_t worker_chars(int worker) const;

 private:
  RouterPolicyConfig config_;
  mutable std::mutex mu_;
  PrefixTree tree_;
};

}  // namespace tessera::serving
