// A small blocking HTTP/1.1 client on plain POSIX sockets, written apart from the server's Beast
// code so the tests speak to the server through an independent implementation: raw requests,
// Content-Length and chunked responses, Server-Sent Events read as they arrive, partial sends for
// slow-client tests.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <vector>

namespace tessera::serving::testing {

struct RawResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // names lower-case
  std::string body;                            // de-chunked
  bool ok = false;                             // a complete response was read
};

class TestConnection {
 public:
  explicit TestConnection(int port);
  ~TestConnection();
  TestConnection(const TestConnection&) = delete;
  TestConnection& operator=(const TestConnection&) = delete;

  bool connected() const { return fd_ >= 0; }
  void send_raw(const std::string& data);
  void send_request(const std::string& method, const std::string& path, const std::string& body,
                    const std::vector<std::string>& extra_headers = {});
  // Reads one full response (keep-alive safe).
  RawResponse read_response(std::chrono::milliseconds timeout = std::chrono::seconds(20));
  // Reads the head of a response; the body then comes by read_event / read_rest.
  RawResponse read_head(std::chrono::milliseconds timeout = std::chrono::seconds(20));
  // The next SSE "data: ..." payload of a chunked event stream ("" at the end or on timeout).
  std::string read_event(std::chrono::milliseconds timeout = std::chrono::seconds(20));
  // Whether the peer closed the connection within `timeout` (reads and drops any data).
  bool wait_closed(std::chrono::milliseconds timeout);
  void close();

 private:
  bool fill(std::chrono::steady_clock::time_point deadline);  // false on EOF/timeout
  bool read_chunk(std::string& out, std::chrono::steady_clock::time_point deadline);
  int fd_ = -1;
  std::string buf_;
  std::string events_;  // de-chunked stream data not yet split into events
  bool chunked_ = false;
  bool stream_done_ = false;
};

RawResponse http_call(int port, const std::string& method, const std::string& path,
                      const std::string& body = "",
                      const std::vector<std::string>& extra_headers = {});

}  // namespace tessera::serving::testing
