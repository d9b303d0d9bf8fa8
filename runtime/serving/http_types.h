// Plain HTTP values and the per-request Exchange that handlers answer through. Kept free of Beast
// so the application (OpenAI API, router) compiles without it.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tessera::serving {

using Headers = std::vector<std::pair<std::string, std::string>>;  // names lower-case

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string target;  // as sent: path + query
  std::string path;    // target without the query
  Headers headers;
  std::string body;
  bool keep_alive = true;
  std::chrono::steady_clock::time_point arrival;  // when its header was complete

  // The first header of that (case-insensitive) name, or "".
  std::string header(std::string_view name) const;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  Headers headers;  // extra headers (Retry-After, ...)
  std::string body;
};

// One request and its response. Every method is thread-safe: calls from other threads (the
// engine's) are carried to the connection's strand. A response is either respond() once, or
// start_stream() + send_chunk()* + end_stream().
class Exchange {
 public:
  virtual ~Exchange() = default;
  virtual const HttpRequest& request() const = 0;
  virtual void respond(HttpResponse response) = 0;
  virtual void start_stream(int status, std::string content_type, Headers headers = {}) = 0;
  virtual void send_chunk(std::string data) = 0;
  virtual void end_stream() = 0;
  // Called once, on the strand, when the client goes away (or the server closes the connection)
  // before the exchange completed. Registered after that happened: called at once.
  virtual void on_disconnect(std::function<void()> fn) = 0;
  // Runs fn on the connection's strand, serialised with this exchange's other handlers.
  virtual void post(std::function<void()> fn) = 0;
  virtual bool disconnected() const = 0;
};

using Handler = std::function<void(std::shared_ptr<Exchange>)>;

// OpenAI's error body: {"error": {"message", "type", "param", "code"}}.
std::string error_json(int status, std::string_view message, std::string_view param = "",
                       std::string_view type = "");
HttpResponse error_response(int status, std::string_view message, std::string_view param = "");
std::string_view status_reason(int status);

}  // namespace tessera::serving
