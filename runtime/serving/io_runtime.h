// The threads of a server process: an I/O pool that runs every socket handler (each connection on
// its own strand) and a small pool for blocking work (model loads) that must never run on an I/O
// thread. Asio stays out of this header so the application code compiles without it.
#pragma once

#include <chrono>
#include <functional>
#include <memory>

namespace tessera::serving {

// A one-shot timer; cancel() before it fires drops the callback.
class TimerHandle {
 public:
  virtual ~TimerHandle() = default;
  virtual void cancel() = 0;
};

class IoRuntime {
 public:
  IoRuntime(int io_threads, int blocking_threads);
  ~IoRuntime();  // stop() + join
  IoRuntime(const IoRuntime&) = delete;
  IoRuntime& operator=(const IoRuntime&) = delete;

  void start();  // launches the threads
  void stop();   // stops the I/O loop and joins every thread; idempotent

  void post(std::function<void()> fn);           // runs on some I/O thread
  void post_blocking(std::function<void()> fn);  // runs on the blocking pool
  std::shared_ptr<TimerHandle> schedule(std::chrono::milliseconds delay, std::function<void()> fn);

  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera::serving
