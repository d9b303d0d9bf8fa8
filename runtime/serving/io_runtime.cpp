#include "runtime/serving/io_runtime.h"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <mutex>

#include "common/error.h"
#include "common/logging.h"
#include "runtime/serving/io_runtime_impl.h"

namespace tessera::serving {
namespace {

class AsioTimer : public TimerHandle, public std::enable_shared_from_this<AsioTimer> {
 public:
  explicit AsioTimer(boost::asio::io_context& ioc) : timer_(ioc) {}
  void arm(std::chrono::milliseconds delay, std::function<void()> fn) {
    timer_.expires_after(delay);
    timer_.async_wait([self = shared_from_this(), fn = std::move(fn)](auto ec) {
      if (!ec && !self->cancelled_) fn();
    });
  }
  void cancel() override {
    cancelled_ = true;
    boost::asio::post(timer_.get_executor(),
                      [self = shared_from_this()] { self->timer_.cancel(); });
  }

 private:
  boost::asio::steady_timer timer_;
  std::atomic<bool> cancelled_{false};
};

}  // namespace

IoRuntime::IoRuntime(int io_threads, int blocking_threads)
    : impl_(std::make_unique<Impl>(io_threads, blocking_threads)) {
  TESSERA_CHECK(io_threads >= 1, "io_threads must be >= 1, got ", io_threads);
  TESSERA_CHECK(blocking_threads >= 1, "blocking_threads must be >= 1, got ", blocking_threads);
}

IoRuntime::~IoRuntime() { stop(); }

void IoRuntime::start() {
  if (impl_->started) return;
  impl_->started = true;
  impl_->work.emplace(impl_->ioc.get_executor());
  for (int i = 0; i < impl_->num_io_threads; ++i) {
    impl_->threads.emplace_back([this] {
      for (;;) {
        try {
          impl_->ioc.run();
          return;
        } catch (const std::exception& e) {
          // A handler that throws must not take the process down with it.
          log::error("serving: I/O handler raised: {}", e.what());
        }
      }
    });
  }
}

void IoRuntime::stop() {
  if (impl_->stopped) return;
  impl_->stopped = true;
  impl_->work.reset();
  impl_->ioc.stop();
  for (auto& t : impl_->threads) t.join();
  impl_->threads.clear();
  impl_->blocking.join();
}

void IoRuntime::post(std::function<void()> fn) { boost::asio::post(impl_->ioc, std::move(fn)); }

void IoRuntime::post_blocking(std::function<void()> fn) {
  boost::asio::post(impl_->blocking, std::move(fn));
}

std::shared_ptr<TimerHandle> IoRuntime::schedule(std::chrono::milliseconds delay,
                                                 std::function<void()> fn) {
  auto timer = std::make_shared<AsioTimer>(impl_->ioc);
  timer->arm(delay, std::move(fn));
  return timer;
}

}  // namespace tessera::serving
