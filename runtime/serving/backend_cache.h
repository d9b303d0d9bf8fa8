// An LRU of warm model backends behind one endpoint (the C++ counterpart of seed 003's
// BackendCache). Keyed by the identity of a ModelSpec (base model and adapter); a hit moves the
// entry to most-recent, a miss loads it (once, however many threads ask at the same time),
// evicting the least recent, whose close() frees its weights and KV memory. close() errors are
// logged and swallowed. A backend still in use by requests when evicted is closed when the last
// user lets go of it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tessera::serving {

struct ModelSpec {
  std::string name;                // the served name (what requests put in "model"); not identity
  std::string base;                // base model folder (or a built-in name such as "tiny")
  std::string adapter;             // adapter folder, "" = none
  bool trust_remote_code = false;  // not identity, as in the seed
  // `tessera serve --lora NAME=PATH`: adapters loaded into this model's engine beside the base,
  // asked for with "model": "<name>:<NAME>" and batched with base requests. Configuration of the
  // server, not of a request (a request only ever names one of these); not identity.
  std::vector<std::pair<std::string, std::string>> loras;
};

// `--model NAME=PATH` or `NAME=PATH:ADAPTER` (the adapter after the last ':'). Throws
// tessera::Error naming the flag's value when it is malformed.
ModelSpec parse_model_flag(std::string_view flag);

struct CacheKey {
  std::string base, adapter;
  auto operator<=>(const CacheKey&) const = default;
  std::string to_string() const;
};
// Paths are made absolute and lexically normal, so "m", "./m" and "m/" are one backend.
CacheKey cache_key_for(const ModelSpec& spec);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual void close() = 0;  // frees weights and KV memory
};

using BackendLoader = std::function<std::shared_ptr<Backend>(const ModelSpec&)>;

class BackendCache {
  struct Entry;

 public:
  // A backend kept open for a request; the cache will not close it before the lease ends.
  class Lease {
   public:
    Lease() = default;
    explicit Lease(std::shared_ptr<Entry> e);
    enum Counted { kCounted };
    Lease(std::shared_ptr<Entry> e, Counted);  // its user count was already taken
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    Lease(Lease&&) noexcept = default;
    Lease& operator=(Lease&&) noexcept;
    ~Lease();
    Backend* get() const;
    Backend* operator->() const { return get(); }
    explicit operator bool() const { return entry_ != nullptr; }
    const CacheKey& key() const;
    const ModelSpec& spec() const;
    double load_seconds() const;

   private:
    void release();
    std::shared_ptr<Entry> entry_;
  };

  BackendCache(int max_size, BackendLoader loader);  // max_size < 1 is refused
  ~BackendCache();                                   // evict_all()

  Lease get_or_load(const ModelSpec& spec);   // blocks while loading; loader errors propagate
  Lease try_get(const ModelSpec& spec);       // a hit only (promotes it); never blocks on a load
  std::vector<CacheKey> loaded_keys() const;  // least recent first
  // Calls fn for every loaded backend (least recent first) without promoting any; under the
  // cache's lock, so fn must be quick and must not call back into the cache.
  void visit(const std::function<void(const ModelSpec&, Backend&)>& fn) const;
  void evict_all();

  int max_size() const { return max_size_; }
  int64_t loads() const;
  int64_t evictions() const;
  int64_t close_errors() const;

 private:
  struct Flight;
  void evict_one_locked(std::vector<std::shared_ptr<Entry>>& to_close);
  static void close_entry(const std::shared_ptr<Entry>& e);

  int max_size_;
  BackendLoader loader_;
  mutable std::mutex mu_;
  std::list<std::shared_ptr<Entry>> lru_;  // front = least recent
  std::map<CacheKey, std::shared_ptr<Flight>> flights_;
  int64_t loads_ = 0, evictions_ = 0;
  std::shared_ptr<std::atomic<int64_t>> close_errors_ = std::make_shared<std::atomic<int64_t>>(0);
};

}  // namespace tessera::serving
