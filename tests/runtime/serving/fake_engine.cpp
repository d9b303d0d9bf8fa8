#include "tests/runtime/serving/fake_engine.h"

#include <algorithm>
#include <random>
#include <stdexcept>

namespace tessera::serving::testing {
namespace {

uint64_t mix(uint64_t x) {  // splitmix64
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

FakeEngine::FakeEngine(FakeEngineOptions options) : opt_(std::move(options)) {
  if (opt_.alphabet.empty()) {
    for (char c : std::string("abcdefghijklmnopqrstuvwxyz ")) opt_.alphabet.push_back(c);
  }
  thread_ = std::thread([this] { loop(); });
}

FakeEngine::~FakeEngine() { stop(); }

uint64_t FakeEngine::request_hash(const std::vector<int32_t>& prompt,
                                  std::optional<uint64_t> seed) {
  uint64_t h = mix(seed ? static_cast<uint64_t>(*seed) ^ 0x5EEDull : 0);
  for (int32_t id : prompt) h = mix(h ^ static_cast<uint32_t>(id));
  return h;
}

int32_t FakeEngine::token_at(const FakeEngineOptions& opt, uint64_t request_hash, int64_t k,
                             int min_tokens) {
  const uint64_t h = mix(request_hash ^ mix(static_cast<uint64_t>(k) + 1));
  if (opt.eos_every > 0 && k >= min_tokens && h % static_cast<uint64_t>(opt.eos_every) == 0) {
    return opt.eos_id;
  }
  std::vector<int32_t> alphabet = opt.alphabet;
  if (alphabet.empty()) {
    for (char c : std::string("abcdefghijklmnopqrstuvwxyz ")) alphabet.push_back(c);
  }
  return alphabet[(h >> 16) % alphabet.size()];
}

std::vector<int32_t> FakeEngine::expected_tokens(const FakeEngineOptions& opt,
                                                 const std::vector<int32_t>& prompt,
                                                 std::optional<uint64_t> seed, int max_tokens,
                                                 int min_tokens, bool ignore_eos,
                                                 const std::vector<int32_t>& stop_ids) {
  std::vector<int32_t> out;
  const uint64_t h = request_hash(prompt, seed);
  for (int k = 0; k < max_tokens; ++k) {
    const int32_t t = token_at(opt, h, k, min_tokens);
    out.push_back(t);
    if (k + 1 >= min_tokens) {
      if (!ignore_eos && t == opt.eos_id) break;
      if (std::find(stop_ids.begin(), stop_ids.end(), t) != stop_ids.end()) break;
    }
  }
  return out;
}

void FakeEngine::add_request(engine::EngineRequest request,
                             std::function<void(const engine::RequestOutput&)> on_output) {
  auto r = std::make_shared<Req>();
  // Greedy and seeded requests are reproducible; the others draw a random salt.
  std::optional<uint64_t> seed = request.params.seed;
  if (!seed && request.params.temperature > 0) {
    static std::mt19937_64 rng(std::random_device{}());
    static std::mutex rng_mu;
    std::lock_guard lock(rng_mu);
    seed = rng();
  }
  r->hash = request_hash(request.prompt_ids, seed);
  r->r = std::move(request);
  r->cb = std::move(on_output);
  std::lock_guard lock(mu_);
  if (opt_.refuse_after >= 0 && added_ >= opt_.refuse_after) {
    throw std::runtime_error("fake engine refuses request " + r->r.id);
  }
  added_++;
  loras_.push_back(r->r.lora);
  waiting_.push_back(std::move(r));
}

std::vector<std::string> FakeEngine::loras() const {
  std::lock_guard lock(mu_);
  return loras_;
}

void FakeEngine::abort(const std::string& id) {
  std::lock_guard lock(mu_);
  to_abort_.insert(id);
}

engine::EngineStats FakeEngine::stats() const {
  std::lock_guard lock(mu_);
  return {static_cast<int64_t>(running_.size()),
          static_cast<int64_t>(waiting_.size()),
          opt_.kv_blocks,
          blocks_used_,
          prompt_tokens_ > 0 ? static_cast<double>(hit_tokens_) / prompt_tokens_ : 0.0,
          steps_,
          0};
}

void FakeEngine::set_stalled(bool s) {
  std::lock_guard lock(mu_);
  stalled_ = s;
}

int64_t FakeEngine::aborts() const {
  std::lock_guard lock(mu_);
  return aborts_;
}

void FakeEngine::stop() {
  {
    std::lock_guard lock(mu_);
    if (stop_) return;
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void FakeEngine::loop() {
  auto next = std::chrono::steady_clock::now();
  for (;;) {
    next += opt_.step_time;
    std::vector<std::pair<std::function<void(const engine::RequestOutput&)>, engine::RequestOutput>>
        out;
    {
      std::unique_lock lock(mu_);
      cv_.wait_until(lock, next, [&] { return stop_; });
      if (stop_) {
        // Whatever is left ends as aborted, so nobody waits for it.
        auto end = [&](const std::shared_ptr<Req>& r) {
          engine::RequestOutput o;
          o.id = r->r.id;
          o.finished = true;
          o.finish_reason = "abort";
          o.completion_tokens = r->generated;
          out.push_back({r->cb, std::move(o)});
        };
        std::for_each(running_.begin(), running_.end(), end);
        std::for_each(waiting_.begin(), waiting_.end(), end);
        running_.clear();
        waiting_.clear();
        blocks_used_ = 0;
      } else if (!stalled_) {
        step(out);
      }
    }
    for (auto& [cb, o] : out) cb(o);
    std::lock_guard lock(mu_);
    if (stop_ && waiting_.empty() && running_.empty()) return;
  }
}

void FakeEngine::step(std::vector<std::pair<std::function<void(const engine::RequestOutput&)>,
                                            engine::RequestOutput>>& out) {
  auto finish = [&](const std::shared_ptr<Req>& r, std::string reason, std::string error = "") {
    engine::RequestOutput o;
    o.id = r->r.id;
    o.finished = true;
    o.finish_reason = std::move(reason);
    o.error = std::move(error);
    o.prompt_tokens = static_cast<int64_t>(r->r.prompt_ids.size());
    o.completion_tokens = r->generated;
    o.cached_prompt_tokens = r->cached;
    out.push_back({r->cb, std::move(o)});
  };
  // Aborts take effect here, at the step after they were asked for; their blocks are freed.
  if (!to_abort_.empty()) {
    auto aborted = [&](const std::shared_ptr<Req>& r) {
      if (!to_abort_.count(r->r.id)) return false;
      blocks_used_ -= r->blocks;
      aborts_++;
      finish(r, "abort");
      return true;
    };
    std::erase_if(running_, aborted);
    std::erase_if(waiting_, aborted);
    to_abort_.clear();
  }
  // Admission: FCFS while slots and blocks allow (a request reserves prompt + max_tokens).
  while (!waiting_.empty() && static_cast<int>(running_.size()) < opt_.max_running) {
    auto& r = waiting_.front();
    const int64_t len = static_cast<int64_t>(r->r.prompt_ids.size());
    if (len >= opt_.max_model_len) {
      finish(r, "error",
             "prompt of " + std::to_string(len) + " tokens exceeds max_model_len " +
                 std::to_string(opt_.max_model_len));
      waiting_.pop_front();
      continue;
    }
    const int64_t total = std::min<int64_t>(len + r->r.params.max_tokens, opt_.max_model_len);
    const int64_t need = (total + opt_.block_size - 1) / opt_.block_size;
    if (blocks_used_ + need > opt_.kv_blocks) break;
    r->blocks = need;
    blocks_used_ += need;
    // The fake prefix cache: full prompt blocks seen before (chained hashes).
    uint64_t h = 0;
    int64_t hits = 0;
    bool chain = true;
    for (int64_t b = 0; (b + 1) * opt_.block_size <= len - 1; ++b) {
      for (int64_t i = b * opt_.block_size; i < (b + 1) * opt_.block_size; ++i) {
        h = mix(h ^ static_cast<uint32_t>(r->r.prompt_ids[i]));
      }
      if (chain && prefix_blocks_.count(h)) {
        hits += opt_.block_size;
      } else {
        chain = false;
        prefix_blocks_.insert(h);
      }
    }
    r->cached = hits;
    prompt_tokens_ += len;
    hit_tokens_ += hits;
    running_.push_back(std::move(r));
    waiting_.pop_front();
  }
  // One token for every running request.
  std::vector<std::shared_ptr<Req>> still;
  for (auto& r : running_) {
    const auto& p = r->r.params;
    const int32_t t = token_at(opt_, r->hash, r->generated, p.min_tokens);
    r->generated++;
    engine::RequestOutput o;
    o.id = r->r.id;
    o.new_token_ids = {t};
    if (p.logprobs >= 0) {
      const uint64_t h = mix(r->hash ^ static_cast<uint64_t>(r->generated));
      const float lp = -0.01f - static_cast<float>(h % 1000) / 1000.0f;
      o.logprobs = {lp};
      std::vector<engine::TopLogprob> top;
      for (int i = 0; i < p.logprobs; ++i) {
        top.push_back({i == 0 ? t : opt_.alphabet[(h + i) % opt_.alphabet.size()],
                       lp - static_cast<float>(i)});
      }
      o.top_logprobs = {top};
    }
    o.prompt_tokens = static_cast<int64_t>(r->r.prompt_ids.size());
    o.completion_tokens = r->generated;
    o.cached_prompt_tokens = r->cached;
    bool done = false;
    if (r->generated >= p.min_tokens) {
      if ((!p.ignore_eos && t == opt_.eos_id) ||
          std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), t) !=
              p.stop_token_ids.end()) {
        o.finished = true;
        o.finish_reason = "stop";
        done = true;
      }
    }
    if (!done && r->generated >= p.max_tokens) {
      o.finished = true;
      o.finish_reason = "length";
      done = true;
    }
    if (done) {
      blocks_used_ -= r->blocks;
    } else {
      still.push_back(r);
    }
    out.push_back({r->cb, std::move(o)});
  }
  running_ = std::move(still);
  steps_++;
}

std::vector<int32_t> byte_ids(const std::string& s, bool bos) {
  std::vector<int32_t> ids;
  if (bos) ids.push_back(256);
  for (unsigned char c : s) ids.push_back(c);
  return ids;
}

std::string text_of(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) {
    if (id < 256) s.push_back(static_cast<char>(id));
  }
  return s;
}

}  // namespace tessera::serving::testing
