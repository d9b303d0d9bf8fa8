#include "runtime/serving/backend_cache.h"

#include <atomic>
#include <chrono>
#include <exception>
#include <filesystem>

#include "common/error.h"
#include "common/logging.h"

namespace tessera::serving {

namespace {

std::string normal_path(const std::string& p) {
  if (p.empty()) return p;
  auto path = std::filesystem::absolute(std::filesystem::path(p)).lexically_normal();
  std::string s = path.string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
}
}  // namespace

struct BackendCache::Entry {
  CacheKey key;
  ModelSpec spec;
  std::shared_ptr<Backend> backend;
  double load_seconds = 0;
  std::mutex mu;
  int users = 0;
  bool evicted = false;
  bool closed = false;
  std::shared_ptr<std::atomic<int64_t>> close_errors;  // the cache's, which may be gone by then
};

struct BackendCache::Flight {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::shared_ptr<Entry> entry;
  std::exception_ptr error;
};

ModelSpec parse_model_flag(std::string_view flag) {
  const size_t eq = flag.find('=');
  TESSERA_CHECK(eq != std::string_view::npos && eq > 0 && eq + 1 < flag.size(),
                "--model must be NAME=PATH or NAME=PATH:ADAPTER, got '", flag, "'");
  ModelSpec spec;
  spec.name = std::string(flag.substr(0, eq));
  std::string_view rest = flag.substr(eq + 1);
  const size_t colon = rest.rfind(':');
  if (colon != std::string_view::npos) {
    spec.base = std::string(rest.substr(0, colon));
    spec.adapter = std::string(rest.substr(colon + 1));
    TESSERA_CHECK(!spec.base.empty() && !spec.adapter.empty(),
                  "--model NAME=PATH:ADAPTER needs both a path and an adapter, got '", flag, "'");
  } else {
    spec.base = std::string(rest);
  }
  for (char c : spec.name) {
    TESSERA_CHECK(c > ' ' && c != '"' && c != '\\', "--model name '", spec.name,
                  "' may not hold spaces, quotes or backslashes");
  }
  return spec;
}

std::string CacheKey::to_string() const { return adapter.empty() ? base : base + ":" + adapter; }

CacheKey cache_key_for(const ModelSpec& spec) {
  return CacheKey{normal_path(spec.base), normal_path(spec.adapter)};
}

BackendCache::Lease::Lease(std::shared_ptr<Entry> e) : entry_(std::move(e)) {
  std::lock_guard lock(entry_->mu);
  entry_->users++;
}

BackendCache::Lease::Lease(std::shared_ptr<Entry> e, Counted) : entry_(std::move(e)) {}

BackendCache::Lease& BackendCache::Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    release();
    entry_ = std::move(other.entry_);
  }
  return *this;
}

BackendCache::Lease::~Lease() { release(); }

void BackendCache::Lease::release() {
  if (!entry_) return;
  bool close_now = false;
  {
    std::lock_guard lock(entry_->mu);
    close_now = --entry_->users == 0 && entry_->evicted && !entry_->closed;
  }
  if (close_now) close_entry(entry_);
  entry_.reset();
}

Backend* BackendCache::Lease::get() const { return entry_ ? entry_->backend.get() : nullptr; }
const CacheKey& BackendCache::Lease::key() const { return entry_->key; }
const ModelSpec& BackendCache::Lease::spec() const { return entry_->spec; }
double BackendCache::Lease::load_seconds() const { return entry_->load_seconds; }

BackendCache::BackendCache(int max_size, BackendLoader loader)
    : max_size_(max_size), loader_(std::move(loader)) {
  TESSERA_CHECK(max_size >= 1, "max_size (--max-loaded-models) must be >= 1, got ", max_size);
  TESSERA_CHECK(loader_ != nullptr, "BackendCache needs a loader");
}

BackendCache::~BackendCache() { evict_all(); }

void BackendCache::close_entry(const std::shared_ptr<Entry>& e) {
  {
    std::lock_guard lock(e->mu);
    if (e->closed) return;
    e->closed = true;
  }
  try {
    e->backend->close();
  } catch (const std::exception& ex) {
    e->close_errors->fetch_add(1);
    log::warn("backend cache: close raised for {}: {}", e->key.to_string(), ex.what());
  } catch (...) {
    e->close_errors->fetch_add(1);
    log::warn("backend cache: close raised for {}: unknown exception", e->key.to_string());
  }
}

// Takes the least recent entry out, preferring one no request is using.
void BackendCache::evict_one_locked(std::vector<std::shared_ptr<Entry>>& to_close) {
  if (lru_.empty()) return;
  auto victim = lru_.begin();
  for (auto it = lru_.begin(); it != lru_.end(); ++it) {
    std::lock_guard lock((*it)->mu);
    if ((*it)->users == 0) {
      victim = it;
      break;
    }
  }
  auto e = *victim;
  lru_.erase(victim);
  evictions_++;
  std::lock_guard lock(e->mu);
  e->evicted = true;
  if (e->users == 0) to_close.push_back(e);
}

BackendCache::Lease BackendCache::try_get(const ModelSpec& spec) {
  const CacheKey key = cache_key_for(spec);
  std::lock_guard lock(mu_);
  for (auto it = lru_.begin(); it != lru_.end(); ++it) {
    if ((*it)->key == key) {
      lru_.splice(lru_.end(), lru_, it);
      return Lease(lru_.back());
    }
  }
  return Lease();
}

BackendCache::Lease BackendCache::get_or_load(const ModelSpec& spec) {
  const CacheKey key = cache_key_for(spec);
  std::shared_ptr<Flight> flight;
  bool leader = false;
  std::vector<std::shared_ptr<Entry>> to_close;
  {
    std::lock_guard lock(mu_);
    for (auto it = lru_.begin(); it != lru_.end(); ++it) {
      if ((*it)->key == key) {
        lru_.splice(lru_.end(), lru_, it);
        return Lease(lru_.back());
      }
    }
    auto f = flights_.find(key);
    if (f != flights_.end()) {
      flight = f->second;
    } else {
      flight = std::make_shared<Flight>();
      flights_[key] = flight;
      leader = true;
      // Make room before loading, so the evicted model's memory is free for the new one.
      while (static_cast<int>(lru_.size() + flights_.size()) > max_size_ && !lru_.empty()) {
        evict_one_locked(to_close);
      }
    }
  }
  for (auto& e : to_close) close_entry(e);
  to_close.clear();

  if (!leader) {
    std::unique_lock lock(flight->mu);
    flight->cv.wait(lock, [&] { return flight->done; });
    if (flight->error) std::rethrow_exception(flight->error);
    // Loaded for us; if it was evicted meanwhile, load again.
    std::shared_ptr<Entry> e = flight->entry;
    lock.unlock();
    if (e) {
      std::lock_guard elock(e->mu);
      if (!e->evicted && !e->closed) {
        e->users++;  // the lease below takes over this count
        return Lease(std::move(e), Lease::kCounted);
      }
    }
    return get_or_load(spec);
  }

  std::shared_ptr<Entry> entry;
  std::exception_ptr error;
  try {
    const auto t0 = std::chrono::steady_clock::now();
    auto backend = loader_(spec);
    TESSERA_CHECK(backend != nullptr, "the loader returned no backend for ", key.to_string());
    entry = std::make_shared<Entry>();
    entry->key = key;
    entry->spec = spec;
    entry->backend = std::move(backend);
    entry->close_errors = close_errors_;
    entry->load_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  } catch (...) {
    error = std::current_exception();
  }
  Lease lease;
  {
    std::lock_guard lock(mu_);
    flights_.erase(key);
    if (entry) {
      loads_++;
      lease = Lease(entry);  // held before any eviction can see it
      lru_.push_back(entry);
      while (static_cast<int>(lru_.size() + flights_.size()) > max_size_ && lru_.size() > 1) {
        evict_one_locked(to_close);
      }
    }
  }
  for (auto& e : to_close) close_entry(e);
  {
    std::lock_guard lock(flight->mu);
    flight->done = true;
    flight->entry = entry;
    flight->error = error;
  }
  flight->cv.notify_all();
  if (error) std::rethrow_exception(error);
  return lease;
}

std::vector<CacheKey> BackendCache::loaded_keys() const {
  std::lock_guard lock(mu_);
  std::vector<CacheKey> keys;
  for (const auto& e : lru_) keys.push_back(e->key);
  return keys;
}

void BackendCache::visit(const std::function<void(const ModelSpec&, Backend&)>& fn) const {
  std::lock_guard lock(mu_);
  for (const auto& e : lru_) fn(e->spec, *e->backend);
}

void BackendCache::evict_all() {
  std::vector<std::shared_ptr<Entry>> to_close;
  {
    std::lock_guard lock(mu_);
    while (!lru_.empty()) evict_one_locked(to_close);
  }
  for (auto& e : to_close) close_entry(e);
}

int64_t BackendCache::loads() const {
  std::lock_guard lock(mu_);
  return loads_;
}
int64_t BackendCache::evictions() const {
  std::lock_guard lock(mu_);
  return evictions_;
}
int64_t BackendCache::close_errors() const { return close_errors_->load(); }

}  // namespace tessera::serving
