// Asynchronous HTTP/1.1 client for the router: one request per connection, the response body
// handed over as it arrives (so Server-Sent Events pass through a chunk at a time). Callbacks run
// on the call's own strand, one at a time; on_done is called exactly once, last.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "runtime/serving/http_types.h"
#include "runtime/serving/io_runtime.h"

namespace tessera::serving {

struct Url {
  std::string host;
  int port = 80;
  std::string base_path;  // "" or "/prefix"
  std::string to_string() const;
};
// "http://host:port[/prefix]"; throws tessera::Error naming the URL when it is not one.
Url parse_url(std::string_view url);

struct ClientRequest {
  std::string method = "GET";
  std::string target = "/";
  Headers headers;
  std::string body;
  std::string content_type = "application/json";
};

struct ClientCallbacks {
  std::function<void(int status, const Headers& headers)> on_head;
  std::function<void(std::string_view data)> on_data;
  std::function<void(const std::string& error)> on_done;  // "" when the response was complete
};

struct ClientTimeouts {
  std::chrono::milliseconds connect{2000};
  std::chrono::milliseconds head{0};   // 0 = none (generation may take long before its head)
  std::chrono::milliseconds total{0};  // 0 = none
};

class ClientCall {
 public:
  virtual ~ClientCall() = default;
  virtual void cancel() = 0;  // on_done("cancelled") follows unless it was already called
};

std::shared_ptr<ClientCall> http_request(IoRuntime& io, const Url& url, ClientRequest request,
                                         ClientCallbacks callbacks, ClientTimeouts timeouts = {});

}  // namespace tessera::serving
