// HTTP/1.1 server on Boost.Beast: keep-alive, one strand per connection, limits and timeouts that
// a slow or hostile client cannot outlast, disconnect detection while a response is pending (a
// read stays posted on the socket), and a drain for graceful shutdown. The application answers
// through Exchange (http_types.h); its handler runs on the connection's strand and must not block.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "runtime/serving/http_types.h"
#include "runtime/serving/io_runtime.h"

namespace tessera::serving {

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;  // 0 = ephemeral
  size_t max_body_bytes = 8 << 20;
  size_t max_header_bytes = 16 << 10;
  // A request's header must arrive within header_timeout of the connection becoming ready for it
  // (this also closes idle keep-alive connections), its body within body_timeout after that.
  std::chrono::milliseconds header_timeout{30000};
  std::chrono::milliseconds body_timeout{60000};
  std::chrono::milliseconds write_timeout{60000};  // one write to a client that does not read
  size_t max_connections = 1024;
  size_t max_pending_write_bytes = 8 << 20;  // a stream whose reader lags more is cut
};

class HttpServer {
 public:
  HttpServer(IoRuntime& io, HttpServerOptions options, Handler handler);
  ~HttpServer();

  void start();  // binds and listens; throws tessera::Error naming host:port on failure
  int port() const;
  const HttpServerOptions& options() const;

  void stop_accepting();
  // From now on idle connections close, requests still arriving get 503, and connections close
  // after their current response.
  void drain();
  void close_all();  // cuts every connection (pending exchanges see a disconnect)

  size_t open_connections() const;
  size_t active_exchanges() const;  // requests read and not yet answered in full

  struct State;

 private:
  std::shared_ptr<State> state_;
};

}  // namespace tessera::serving
