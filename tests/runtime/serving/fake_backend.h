// Test backends for the API server: a FakeEngine with the byte tokenizer, optionally an embedder
// (so /v1/embeddings can be tested before encoders exist), and a loader that records which
// specs it was asked to load.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "runtime/serving/byte_tokenizer.h"
#include "runtime/serving/serving_backend.h"
#include "tests/runtime/serving/fake_embedder.h"
#include "tests/runtime/serving/fake_engine.h"

namespace tessera::serving::testing {

class FakeBackend : public ServingBackend {
 public:
  FakeBackend(FakeEngineOptions opt, bool encoder, bool generator = true)
      : engine_(generator ? std::make_unique<FakeEngine>(opt) : nullptr),
        embedder_(encoder ? std::make_unique<FakeEmbedder>() : nullptr) {}
  engine::EngineClient* engine() override { return engine_.get(); }
  FakeEngine* fake() { return engine_.get(); }
  const ServingTokenizer& tokenizer() const override { return tok_; }
  EmbeddingClient* embedder() override { return embedder_.get(); }
  void close() override {
    closes++;
    if (engine_) engine_->stop();
    if (fail_close) throw std::runtime_error("close failed on purpose");
  }
  std::atomic<int> closes{0};
  bool fail_close = false;

 private:
  std::unique_ptr<FakeEngine> engine_;
  std::unique_ptr<FakeEmbedder> embedder_;
  ByteTokenizer tok_;
};

struct FakeLoader {
  FakeEngineOptions engine;
  std::chrono::milliseconds load_time{0};
  std::atomic<int> fail_loads{0};  // this many loads throw (a broken checkpoint) before one works
  std::vector<std::string> encoders;  // served names that are encoders
  std::mutex mu;
  std::vector<ModelSpec> loaded;  // every spec the loader was asked for, in order
  std::vector<std::shared_ptr<FakeBackend>> backends;

  ServingBackendLoader loader() {
    return [this](const ModelSpec& spec) -> std::shared_ptr<ServingBackend> {
      if (load_time.count() > 0) std::this_thread::sleep_for(load_time);
      if (fail_loads.load() > 0) {
        fail_loads--;
        throw std::runtime_error("'" + spec.base + "/model.safetensors': truncated (on purpose)");
      }
      bool enc = false;
      for (const auto& e : encoders) enc |= e == spec.name;
      auto b = std::make_shared<FakeBackend>(engine, enc, !enc);
      std::lock_guard lock(mu);
      loaded.push_back(spec);
      backends.push_back(b);
      return b;
    };
  }
  std::shared_ptr<FakeBackend> last() {
    std::lock_guard lock(mu);
    return backends.empty() ? nullptr : backends.back();
  }
};

}  // namespace tessera::serving::testing
