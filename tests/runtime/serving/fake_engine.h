// A deterministic engine for serving tests (never part of the product). Each step (every
// step_time) it admits waiting requests while slots and KV blocks allow, and gives every running
// request one token: token k of a request is a hash of (prompt, seed, k) over a small alphabet, so
// the tests can compute the expected text independently (FakeEngine::expected_tokens). It honours
// max_tokens, min_tokens, stop ids, eos (optional), abort (at the next step, blocks freed), and
// keeps a fake KV block pool so a freed request is visible in stats().
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "runtime/engine/engine_client.h"

namespace tessera::serving::testing {

struct FakeEngineOptions {
  std::chrono::microseconds step_time{2000};
  int max_running = 8;
  int64_t kv_blocks = 1024;
  int block_size = 16;
  int64_t max_model_len = 4096;
  std::vector<int32_t> alphabet;  // default: the bytes of "abcdefghijklmnopqrstuvwxyz "
  int32_t eos_id = 257;
  int eos_every = 0;      // > 0: token k is eos when hash % eos_every == 0 (k >= min_tokens)
  int refuse_after = -1;  // >= 0: add_request throws once this many requests were added
};

class FakeEngine : public engine::EngineClient {
 public:
  explicit FakeEngine(FakeEngineOptions options = {});
  ~FakeEngine() override;

  void add_request(engine::EngineRequest request,
                   std::function<void(const engine::RequestOutput&)> on_output) override;
  void abort(const std::string& id) override;
  engine::EngineStats stats() const override;
  int64_t max_model_len() const override { return opt_.max_model_len; }

  void stop();               // joins the engine thread; requests left get a final "abort"
  void set_stalled(bool s);  // a stalled engine makes no step
  int64_t aborts() const;    // requests that ended by abort
  std::vector<std::string> loras() const;  // EngineRequest::lora of every request, in order
  const FakeEngineOptions& options() const { return opt_; }

  // The tokens a request generates (greedy or seeded), as the tests' reference.
  static std::vector<int32_t> expected_tokens(const FakeEngineOptions& opt,
                                              const std::vector<int32_t>& prompt,
                                              std::optional<uint64_t> seed, int max_tokens,
                                              int min_tokens = 0, bool ignore_eos = false,
                                              const std::vector<int32_t>& stop_ids = {});
  static int32_t token_at(const FakeEngineOptions& opt, uint64_t request_hash, int64_t k,
                          int min_tokens);
  static uint64_t request_hash(const std::vector<int32_t>& prompt, std::optional<uint64_t> seed);

 private:
  struct Req {
    engine::EngineRequest r;
    std::function<void(const engine::RequestOutput&)> cb;
    uint64_t hash = 0;
    int64_t generated = 0;
    int64_t blocks = 0;
    int64_t cached = 0;
    bool abort = false;
  };
  void loop();
  void step(std::vector<std::pair<std::function<void(const engine::RequestOutput&)>,
                                  engine::RequestOutput>>& out);

  FakeEngineOptions opt_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Req>> waiting_;
  std::vector<std::shared_ptr<Req>> running_;
  std::set<std::string> to_abort_;
  std::set<uint64_t> prefix_blocks_;
  int64_t blocks_used_ = 0, steps_ = 0, aborts_ = 0, added_ = 0;
  int64_t prompt_tokens_ = 0, hit_tokens_ = 0;
  std::vector<std::string> loras_;
  bool stalled_ = false, stop_ = false;
  std::thread thread_;
};

// The byte tokenizer's ids of `s` (<bos> = 256 first when `bos`), and the text of byte ids
// (ids past 255 dropped): what the tests hand FakeEngine and read back.
std::vector<int32_t> byte_ids(const std::string& s, bool bos = true);
std::string text_of(const std::vector<int32_t>& ids);

}  // namespace tessera::serving::testing
