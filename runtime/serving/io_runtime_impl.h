// Internal: the Asio objects behind IoRuntime, for the files that do socket work.
#pragma once

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>

#include <optional>
#include <thread>
#include <vector>

#include "runtime/serving/io_runtime.h"

namespace tessera::serving {

struct IoRuntime::Impl {
  Impl(int io_threads, int blocking_threads)
      : num_io_threads(io_threads), blocking(static_cast<size_t>(blocking_threads)) {}
  int num_io_threads;
  boost::asio::io_context ioc;
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work;
  std::vector<std::thread> threads;
  boost::asio::thread_pool blocking;
  bool started = false;
  bool stopped = false;
};

}  // namespace tessera::serving
