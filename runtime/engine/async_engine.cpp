#include "runtime/engine/async_engine.h"

#include <algorithm>
#include <chrono>

#include "common/error.h"
#include "sharding/watchdog.h"

namespace tessera::engine {

AsyncEngine::AsyncEngine(EngineCore& core) : core_(core), max_model_len_(core.max_model_len()) {
  TESSERA_CHECK(core.leader(), "AsyncEngine runs on the tensor-parallel group's leader");
  stats_ = core.stats();
}

AsyncEngine::~AsyncEngine() {
  stop();
  if (thread_.joinable()) thread_.join();
}

void AsyncEngine::add_request(EngineRequest request,
                              std::function<void(const RequestOutput&)> on_output) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.push_back({std::move(request), std::move(on_output)});
  }
  cv_.notify_one();
}

void AsyncEngine::abort(const std::string& id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    aborts_.push_back(id);
  }
  cv_.notify_one();
}

EngineStats AsyncEngine::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void AsyncEngine::start() {
  TESSERA_CHECK(!thread_.joinable(), "AsyncEngine already started");
  thread_ = std::thread([this] {
    try {
      run();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      error_ = std::current_exception();
    }
  });
}

void AsyncEngine::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
}

void AsyncEngine::run() {
  try {
    loop();
  } catch (const Error& e) {
    core_.fail_workers(e.message());
    throw;
  } catch (const std::exception& e) {
    core_.fail_workers(e.what());
    throw;
  }
  core_.release_workers();
}

void AsyncEngine::loop() {
  // An idle leader pings its group a few times per watchdog timeout, at least every 4 s: the
  // other ranks' watchdogs see it alive, and a stopped peer ends the job within timeout + 4 s.
  const auto watchdog = sharding::Watchdog::global().timeout();
  const auto ping_every = std::clamp<std::chrono::milliseconds>(
      watchdog / 4, std::chrono::milliseconds(10), std::chrono::milliseconds(4000));
  while (true) {
    std::deque<Pending> pending;
    std::deque<std::string> aborts;
    bool stopping = false;
    bool idle = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      const auto ready = [&] {
        return stop_ || !pending_.empty() || !aborts_.empty() || core_.has_unfinished();
      };
      if (watchdog.count() > 0) {
        idle = !cv_.wait_for(lock, ping_every, ready);
      } else {
        cv_.wait(lock, ready);
      }
      pending.swap(pending_);
      aborts.swap(aborts_);
      stopping = stop_;
    }
    if (idle) {
      core_.heartbeat();
      continue;
    }
    for (auto& p : pending) core_.add_request(std::move(p.request), std::move(p.on_output));
    for (const auto& id : aborts) core_.abort(id);
    if (stopping) {
      // Abort what is left and deliver the final outputs before leaving.
      while (core_.has_unfinished()) {
        core_.abort_all();
        core_.step();
      }
      return;
    }
    if (core_.has_unfinished()) core_.step();
    const EngineStats s = core_.stats();
    std::lock_guard<std::mutex> lock(mu_);
    stats_ = s;
  }
}

}  // namespace tessera::engine
