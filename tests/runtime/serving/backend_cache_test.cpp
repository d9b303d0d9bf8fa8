// BackendCache, test by test against seed 003 (dlm_sway's tests of its Python BackendCache):
//
// | seed 003 (tests/.../test_cache.py)                       | here |
// |----------------------------------------------------------|---------------------------------------|
// | TestCacheKey.test_key_is_stable_across_equivalent_specs  | CacheKey.StableAcrossEquivalentSpecs
// | | TestCacheKey.test_key_differs_on_base                    | CacheKey.DiffersOnBase | |
// TestCacheKey.test_key_differs_on_adapter                 | CacheKey.DiffersOnAdapter | |
// TestCacheKey.test_key_ignores_trust_remote_code          | CacheKey.IgnoresNonIdentityFields | |
// TestCacheLRU.test_max_size_validation                    | CacheLru.MaxSizeBelowOneIsRefused | |
// TestCacheLRU.test_hit_promotes_to_mru                    | CacheLru.HitPromotesToMostRecent | |
// TestCacheLRU.test_eviction_closes_lru_backend            | CacheLru.EvictionClosesTheLeastRecent
// | | TestCacheLRU.test_evict_all_closes_every_backend         |
// CacheLru.EvictAllClosesEveryBackend   | | TestCacheLRU.test_close_failure_is_swallowed |
// CacheLru.CloseFailureIsLoggedAndSwallowed | |
// TestSingleFlight.test_concurrent_get_or_load_loads_once  | SingleFlight.EightThreadsLoadOnce |
//
// The seed fills the cache through its private dict (_seed); here entries go in through
// get_or_load with a stub loader, which leaves the cache in the same state. Beyond the seed:
// loader errors reach every waiter and the next call loads again; a backend evicted while a
// request holds it is closed when that request lets go; --model flag parsing.
#include "runtime/serving/backend_cache.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>

#include <atomic>
#include <thread>

#include "common/error.h"
#include "common/logging.h"

namespace tessera::serving {
namespace {

struct StubBackend : Backend {
  explicit StubBackend(std::string t) : tag(std::move(t)) {}
  void close() override {
    close_count++;
    if (fail) throw std::runtime_error("close failed");
  }
  std::string tag;
  std::atomic<int> close_count{0};
  bool fail = false;
};

ModelSpec spec(const std::string& base, const std::string& adapter = "") {
  return ModelSpec{base, base, adapter, false};
}

// A loader handing out StubBackends it remembers by base name.
struct StubLoader {
  std::mutex mu;
  std::map<std::string, std::shared_ptr<StubBackend>> made;
  std::atomic<int> builds{0};
  BackendLoader fn() {
    return [this](const ModelSpec& s) {
      builds++;
      auto b = std::make_shared<StubBackend>(s.name);
      std::lock_guard lock(mu);
      made[s.name] = b;
      return b;
    };
  }
  std::shared_ptr<StubBackend> get(const std::string& n) {
    std::lock_guard lock(mu);
    return made[n];
  }
};

TEST(CacheKey, StableAcrossEquivalentSpecs) {
  EXPECT_EQ(cache_key_for(spec("modelA")), cache_key_for(spec("modelA")));
  // Spellings of one folder are one backend.
  EXPECT_EQ(cache_key_for(spec("modelA")), cache_key_for(spec("./modelA/")));
  EXPECT_EQ(cache_key_for(spec("/m/a")), cache_key_for(spec("/m/x/../a")));
}

TEST(CacheKey, DiffersOnBase) {
  EXPECT_NE(cache_key_for(spec("modelA")), cache_key_for(spec("modelB")));
}

TEST(CacheKey, DiffersOnAdapter) {
  EXPECT_NE(cache_key_for(spec("modelA", "ad")), cache_key_for(spec("modelA")));
  EXPECT_NE(cache_key_for(spec("modelA", "ad1")), cache_key_for(spec("modelA", "ad2")));
}

TEST(CacheKey, IgnoresNonIdentityFields) {
  ModelSpec plain{"a", "modelA", "", false};
  ModelSpec trust{"other-name", "modelA", "", true};  // served name and trust flag differ
  EXPECT_EQ(cache_key_for(plain), cache_key_for(trust));
}

TEST(CacheLru, MaxSizeBelowOneIsRefused) {
  StubLoader loader;
  try {
    BackendCache cache(0, loader.fn());
    FAIL() << "max_size 0 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("must be >= 1, got 0"), std::string::npos) << e.what();
  }
  EXPECT_THROW(BackendCache(-3, loader.fn()), Error);
}

TEST(CacheLru, HitPromotesToMostRecent) {
  StubLoader loader;
  BackendCache cache(2, loader.fn());
  cache.get_or_load(spec("A"));
  cache.get_or_load(spec("B"));
  auto lease = cache.get_or_load(spec("A"));  // a hit
  EXPECT_EQ(lease.get(), loader.get("A").get());
  EXPECT_EQ(loader.builds.load(), 2);
  const auto keys = cache.loaded_keys();
  ASSERT_EQ(keys.size(), 2u);
  EXPECT_EQ(keys.back(), cache_key_for(spec("A")));
  EXPECT_EQ(keys.front(), cache_key_for(spec("B")));
}

TEST(CacheLru, EvictionClosesTheLeastRecent) {
  StubLoader loader;
  BackendCache cache(2, loader.fn());
  cache.get_or_load(spec("A"));
  cache.get_or_load(spec("B"));
  cache.get_or_load(spec("C"));
  EXPECT_EQ(loader.get("A")->close_count.load(), 1) << "LRU eviction should call close()";
  EXPECT_EQ(loader.get("B")->close_count.load(), 0);
  const auto keys = cache.loaded_keys();
  EXPECT_EQ(std::count(keys.begin(), keys.end(), cache_key_for(spec("A"))), 0);
  EXPECT_EQ(std::count(keys.begin(), keys.end(), cache_key_for(spec("B"))), 1);
  EXPECT_EQ(std::count(keys.begin(), keys.end(), cache_key_for(spec("C"))), 1);
  EXPECT_EQ(cache.evictions(), 1);
}

TEST(CacheLru, EvictAllClosesEveryBackend) {
  StubLoader loader;
  BackendCache cache(3, loader.fn());
  for (int i = 0; i < 3; ++i) cache.get_or_load(spec("M" + std::to_string(i)));
  cache.evict_all();
  EXPECT_TRUE(cache.loaded_keys().empty());
  for (int i = 0; i < 3; ++i) EXPECT_EQ(loader.get("M" + std::to_string(i))->close_count, 1);
}

TEST(CacheLru, CloseFailureIsLoggedAndSwallowed) {
  auto sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(16);
  log::logger().sinks().push_back(sink);
  StubLoader loader;
  BackendCache cache(1, loader.fn());
  cache.get_or_load(spec("boom"));
  loader.get("boom")->fail = true;
  EXPECT_NO_THROW(cache.evict_all());
  log::logger().sinks().pop_back();
  bool logged = false;
  for (const auto& line : sink->last_formatted()) {
    logged |= line.find("close raised") != std::string::npos;
  }
  EXPECT_TRUE(logged);
  EXPECT_TRUE(cache.loaded_keys().empty());
  EXPECT_EQ(cache.close_errors(), 1);
}

TEST(SingleFlight, EightThreadsLoadOnce) {
  std::atomic<int> builds{0};
  auto backend = std::make_shared<StubBackend>("solo");
  BackendCache cache(2, [&](const ModelSpec&) {
    builds++;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // widen the window
    return backend;
  });
  std::vector<std::thread> threads;
  std::vector<Backend*> got(8, nullptr);
  std::atomic<int> errors{0};
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      try {
        got[i] = cache.get_or_load(spec("solo")).get();
      } catch (...) {
        errors++;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(builds.load(), 1) << "single-flight broken: built " << builds.load() << " times";
  for (auto* b : got) EXPECT_EQ(b, backend.get());
}

TEST(SingleFlight, LoaderErrorsReachEveryWaiterAndTheNextCallRetries) {
  std::atomic<int> builds{0};
  BackendCache cache(1, [&](const ModelSpec&) -> std::shared_ptr<Backend> {
    if (builds++ == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      throw std::runtime_error("weights missing");
    }
    return std::make_shared<StubBackend>("ok");
  });
  std::atomic<int> failed{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      try {
        cache.get_or_load(spec("x"));
      } catch (const std::runtime_error& e) {
        if (std::string(e.what()) == "weights missing") failed++;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failed.load(), 4);
  EXPECT_EQ(builds.load(), 1);
  EXPECT_TRUE(cache.loaded_keys().empty());
  EXPECT_NE(cache.get_or_load(spec("x")).get(), nullptr);
  EXPECT_EQ(builds.load(), 2);
}

TEST(CacheLru, BackendInUseIsClosedWhenItsLastUserLetsGo) {
  StubLoader loader;
  BackendCache cache(1, loader.fn());
  {
    auto in_use = cache.get_or_load(spec("A"));
    cache.get_or_load(spec("B"));  // evicts A, which a request still holds
    EXPECT_EQ(loader.get("A")->close_count.load(), 0);
    EXPECT_EQ(cache.loaded_keys().size(), 1u);
  }
  EXPECT_EQ(loader.get("A")->close_count.load(), 1);
  // try_get never loads.
  EXPECT_FALSE(cache.try_get(spec("A")));
  EXPECT_TRUE(cache.try_get(spec("B")));
}

TEST(ModelFlag, Parses) {
  auto s = parse_model_flag("llama=/models/llama");
  EXPECT_EQ(s.name, "llama");
  EXPECT_EQ(s.base, "/models/llama");
  EXPECT_EQ(s.adapter, "");
  s = parse_model_flag("chat=/models/llama:/adapters/chat");
  EXPECT_EQ(s.base, "/models/llama");
  EXPECT_EQ(s.adapter, "/adapters/chat");
  for (const char* bad : {"llama", "=x", "a=", "a=x:", "a=:y", "a b=x"}) {
    EXPECT_THROW(parse_model_flag(bad), Error) << bad;
  }
  try {
    parse_model_flag("nopath");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'nopath'"), std::string::npos);
  }
}

}  // namespace
}  // namespace tessera::serving
