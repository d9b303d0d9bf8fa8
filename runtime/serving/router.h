// `tessera router`: one endpoint in front of several OpenAI servers (replicas). Requests go where
// CacheAwarePolicy says; /health of every replica is polled. A replica is taken out after
// `failures_to_remove` failed checks in a row, or at once when a connection fails during a
// request; one that answers again is taken back in. A request
// that has produced no output yet is retried on another replica; a stream that had started and
// loses its replica ends with an error event and [DONE], never a hang.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "runtime/serving/http_server.h"
#include "runtime/serving/io_runtime.h"
#include "runtime/serving/metrics.h"
#include "runtime/serving/router_policy.h"

namespace tessera::serving {

struct RouterOptions {
  std::vector<std::string> backends;  // http://host:port
  std::vector<std::string> api_keys;  // checked on every route but /health; forwarded as is
  std::chrono::milliseconds health_interval{1000};
  std::chrono::milliseconds health_timeout{1000};
  // Failed health checks in a row before a replica is taken out. One slow /health (a busy host,
  // a pause) must not empty the rotation: with one replica left, every request would get 503
  // until the next good check. A request's failed connection takes it out at once.
  int failures_to_remove = 3;
  int successes_to_add = 1;  // good checks before it is taken back in
  int max_attempts = 3;      // replicas tried for a request with no output yet
  RouterPolicyConfig policy;
};

struct WorkerStatus {
  std::string url;
  bool healthy = false;
  int64_t load = 0;
  int64_t routed = 0;
  int64_t routed_by_cache = 0;
  int64_t failures = 0;
};

class Router {
 public:
  Router(IoRuntime& io, HttpServerOptions http, RouterOptions options);
  ~Router();
  void start();  // binds, starts health checks; throws tessera::Error on bad options
  int port() const;
  void shutdown(std::chrono::milliseconds timeout);
  std::vector<WorkerStatus> workers() const;
  size_t requests_in_flight() const;  // forwarded and not yet answered (what shutdown waits for)

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace tessera::serving
