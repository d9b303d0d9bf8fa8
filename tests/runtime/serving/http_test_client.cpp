#include "tests/runtime/serving/http_test_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>

namespace tessera::serving::testing {

using Clock = std::chrono::steady_clock;

TestConnection::TestConnection(int port) {
  fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd_);
    fd_ = -1;
    return;
  }
  int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

TestConnection::~TestConnection() { close(); }

void TestConnection::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void TestConnection::send_raw(const std::string& data) {
  size_t off = 0;
  while (fd_ >= 0 && off < data.size()) {
    const ssize_t n = ::send(fd_, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
}

void TestConnection::send_request(const std::string& method, const std::string& path,
                                  const std::string& body,
                                  const std::vector<std::string>& extra_headers) {
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n";
  for (const auto& h : extra_headers) req += h + "\r\n";
  if (!body.empty() || method == "POST") {
    req +=
        "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  }
  req += "\r\n" + body;
  send_raw(req);
}

bool TestConnection::fill(Clock::time_point deadline) {
  if (fd_ < 0) return false;
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  if (left.count() <= 0) return false;
  pollfd p{fd_, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
  char tmp[16384];
  const ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
  if (n <= 0) return false;
  buf_.append(tmp, static_cast<size_t>(n));
  return true;
}

RawResponse TestConnection::read_head(std::chrono::milliseconds timeout) {
  RawResponse r;
  const auto deadline = Clock::now() + timeout;
  size_t end;
  while ((end = buf_.find("\r\n\r\n")) == std::string::npos) {
    if (!fill(deadline)) return r;
  }
  std::string head = buf_.substr(0, end);
  buf_.erase(0, end + 4);
  // A 100 Continue comes before the real head.
  if (head.rfind("HTTP/1.1 100", 0) == 0) return read_head(timeout);
  const size_t sp = head.find(' ');
  r.status = std::atoi(head.c_str() + sp + 1);
  size_t pos = head.find("\r\n");
  while (pos != std::string::npos) {
    const size_t next = head.find("\r\n", pos + 2);
    std::string line =
        head.substr(pos + 2, next == std::string::npos ? std::string::npos : next - pos - 2);
    const size_t colon = line.find(':');
    if (colon != std::string::npos) {
      std::string name = line.substr(0, colon);
      std::transform(name.begin(), name.end(), name.begin(), ::tolower);
      std::string value = line.substr(colon + 1);
      value.erase(0, value.find_first_not_of(' '));
      r.headers[name] = value;
    }
    pos = next;
  }
  chunked_ = r.headers.count("transfer-encoding") && r.headers["transfer-encoding"] == "chunked";
  stream_done_ = false;
  events_.clear();
  r.ok = true;
  return r;
}

bool TestConnection::read_chunk(std::string& out, Clock::time_point deadline) {
  size_t eol;
  while ((eol = buf_.find("\r\n")) == std::string::npos) {
    if (!fill(deadline)) return false;
  }
  const size_t len = std::stoul(buf_.substr(0, eol), nullptr, 16);
  while (buf_.size() < eol + 2 + len + 2) {
    if (!fill(deadline)) return false;
  }
  out = buf_.substr(eol + 2, len);
  buf_.erase(0, eol + 2 + len + 2);
  if (len == 0) stream_done_ = true;
  return true;
}

RawResponse TestConnection::read_response(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  RawResponse r = read_head(timeout);
  if (!r.ok) return r;
  r.ok = false;
  if (chunked_) {
    std::string chunk;
    while (!stream_done_) {
      if (!read_chunk(chunk, deadline)) return r;
      r.body += chunk;
    }
  } else if (r.headers.count("content-length")) {
    const size_t len = std::stoul(r.headers["content-length"]);
    while (buf_.size() < len) {
      if (!fill(deadline)) return r;
    }
    r.body = buf_.substr(0, len);
    buf_.erase(0, len);
  } else {
    while (fill(deadline)) {
    }
    r.body = std::move(buf_);
    buf_.clear();
  }
  r.ok = true;
  return r;
}

std::string TestConnection::read_event(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    const size_t end = events_.find("\n\n");
    if (end != std::string::npos) {
      std::string ev = events_.substr(0, end);
      events_.erase(0, end + 2);
      if (ev.rfind("data: ", 0) == 0) return ev.substr(6);
      continue;  // comments, other fields
    }
    if (stream_done_) return "";
    std::string chunk;
    if (chunked_) {
      if (!read_chunk(chunk, deadline)) return "";
    } else {
      if (!fill(deadline)) return "";
      chunk = std::move(buf_);
      buf_.clear();
    }
    events_ += chunk;
  }
}

bool TestConnection::wait_closed(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (fd_ >= 0) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
    char tmp[4096];
    const ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
    if (n <= 0) return true;
  }
  return true;
}

RawResponse http_call(int port, const std::string& method, const std::string& path,
                      const std::string& body, const std::vector<std::string>& extra_headers) {
  TestConnection c(port);
  if (!c.connected()) return {};
  c.send_request(method, path, body, extra_headers);
  return c.read_response();
}

}  // namespace tessera::serving::testing
