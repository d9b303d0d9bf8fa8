// HTTP/1.1 server on Boost.Beast: keep-alive, one strand per connection, limits and timeouts that
// a slow or hostile client cannot outlast, disconnect detection while a response is pending (a
// read stays posted on the socket), and a drain for graceful shutdown. The application answers
// through Exchange (http_types.h); its handler runs on the connection's strand and must not block.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

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
  // Told the status of each request the server answers itself, before any handler sees it: 400
  // (malformed), 413 (body over the limit), 431 (header over the limit), 503 (shutting down).
  // Runs on the connection's strand; must not block. Empty: nothing is told.
  std::function<void(int status)> on_refused;
};

// One request parsed from the bytes a client sent, as a connection parses it (the same parser
// limits, the same error statuses and messages, the same HttpRequest), without a socket: for the
// fuzzer and for tests. `arrival` is left unset.
struct HttpParseResult {
  // 0: a complete request in `request`; -1: incomplete (the server would wait for more bytes, up
  // to its timeouts); 400, 413 or 431: what the server answers before it closes the connection.
  int status = 0;
  std::string error;  // the message of that answer
  HttpRequest request;
  size_t consumed = 0;  // bytes of this request; a pipelined one may follow
};
HttpParseResult parse_http_request(std::string_view bytes, const HttpServerOptions& options);

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
