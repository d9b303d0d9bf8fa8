#include "runtime/serving/http_client.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>

#include <cctype>
#include <charconv>
#include <limits>

#include "common/error.h"
#include "runtime/serving/io_runtime_impl.h"

namespace tessera::serving {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = net::ip::tcp;

std::string Url::to_string() const {
  return "http://" + host + ":" + std::to_string(port) + base_path;
}

Url parse_url(std::string_view url) {
  std::string_view rest = url;
  TESSERA_CHECK(rest.substr(0, 7) == "http://", "backend URL must start with http://, got '", url,
                "'");
  rest.remove_prefix(7);
  const size_t slash = rest.find('/');
  std::string_view hostport = rest.substr(0, slash);
  Url u;
  if (slash != std::string_view::npos) {
    u.base_path = std::string(rest.substr(slash));
    while (!u.base_path.empty() && u.base_path.back() == '/') u.base_path.pop_back();
  }
  const size_t colon = hostport.rfind(':');
  u.host = std::string(hostport.substr(0, colon));
  if (colon != std::string_view::npos) {
    const auto p = hostport.substr(colon + 1);
    int port = -1;
    auto [ptr, ec] = std::from_chars(p.data(), p.data() + p.size(), port);
    TESSERA_CHECK(ec == std::errc() && ptr == p.data() + p.size() && port > 0 && port <= 65535,
                  "bad port in URL '", url, "'");
    u.port = port;
  }
  TESSERA_CHECK(!u.host.empty(), "no host in URL '", url, "'");
  return u;
}

namespace {

class Call : public ClientCall, public std::enable_shared_from_this<Call> {
 public:
  Call(IoRuntime& io, Url url, ClientRequest req, ClientCallbacks cb, ClientTimeouts t)
      : strand_(net::make_strand(io.impl().ioc)),
        socket_(strand_),
        resolver_(strand_),
        timer_(strand_),
        total_timer_(strand_),
        url_(std::move(url)),
        req_(std::move(req)),
        cb_(std::move(cb)),
        timeouts_(t) {}

  void start() {
    net::dispatch(strand_, [self = shared_from_this()] { self->do_start(); });
  }

  void cancel() override {
    net::dispatch(strand_, [self = shared_from_this()] { self->fail("cancelled"); });
  }

 private:
  void do_start() {
    if (timeouts_.total.count() > 0) {
      total_timer_.expires_after(timeouts_.total);
      total_timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
        if (!ec) self->fail("timed out");
      });
    }
    arm(timeouts_.connect, "connect timed out");
    beast::error_code ec;
    auto addr = net::ip::make_address(url_.host, ec);
    if (!ec) {
      connect(tcp::endpoint(addr, static_cast<unsigned short>(url_.port)));
      return;
    }
    resolver_.async_resolve(
        url_.host, std::to_string(url_.port),
        [self = shared_from_this()](beast::error_code e, auto results) {
          if (self->done_) return;
          if (e || results.empty()) {
            self->fail("cannot resolve " + self->url_.host + ": " + e.message());
            return;
          }
          self->connect(results.begin()->endpoint());
        });
  }

  void connect(tcp::endpoint ep) {
    socket_.async_connect(ep, [self = shared_from_this()](beast::error_code ec) {
      if (self->done_) return;
      if (ec) {
        self->fail("connect to " + self->url_.to_string() + " failed: " + ec.message());
        return;
      }
      beast::error_code e;
      self->socket_.set_option(tcp::no_delay(true), e);
      self->send();
    });
  }

  void send() {
    std::string target = url_.base_path + req_.target;
    out_ = req_.method + " " + target + " HTTP/1.1\r\nHost: " + url_.host + ":" +
           std::to_string(url_.port) + "\r\nConnection: close\r\n";
    for (const auto& [k, v] : req_.headers) out_ += k + ": " + v + "\r\n";
    if (!req_.body.empty() || req_.method == "POST") {
      out_ += "Content-Type: " + req_.content_type +
              "\r\nContent-Length: " + std::to_string(req_.body.size()) + "\r\n";
    }
    out_ += "\r\n" + req_.body;
    arm(timeouts_.head, "no response head in time");
    net::async_write(
        socket_, net::buffer(out_), [self = shared_from_this()](beast::error_code ec, size_t) {
          if (self->done_) return;
          if (ec) {
            self->fail("sending to " + self->url_.to_string() + " failed: " + ec.message());
            return;
          }
          self->read_head();
        });
  }

  void read_head() {
    // No limit; not boost::none, which Beast 1.74 compares wrongly (every body "exceeds" it).
    parser_.body_limit(std::numeric_limits<std::uint64_t>::max());
    http::async_read_header(
        socket_, buffer_, parser_, [self = shared_from_this()](beast::error_code ec, size_t) {
          if (self->done_) return;
          self->timer_.cancel();
          if (ec) {
            self->fail("reading the response of " + self->url_.to_string() +
                       " failed: " + ec.message());
            return;
          }
          Headers hs;
          for (const auto& f : self->parser_.get()) {
            std::string name(f.name_string());
            for (auto& c : name) {
              c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
            }
            hs.emplace_back(std::move(name), std::string(f.value()));
          }
          if (self->cb_.on_head) {
            self->cb_.on_head(self->parser_.get().result_int(), hs);
          }
          if (self->done_) return;
          self->read_body();
        });
  }

  void read_body() {
    if (parser_.is_done()) {
      finish("");
      return;
    }
    parser_.get().body().data = body_buf_;
    parser_.get().body().size = sizeof body_buf_;
    http::async_read_some(
        socket_, buffer_, parser_, [self = shared_from_this()](beast::error_code ec, size_t) {
          if (self->done_) return;
          if (ec == http::error::need_buffer) ec = {};
          const size_t got = sizeof self->body_buf_ - self->parser_.get().body().size;
          if (got > 0 && self->cb_.on_data) {
            self->cb_.on_data(std::string_view(self->body_buf_, got));
          }
          if (self->done_) return;
          if (ec) {
            self->fail("the response of " + self->url_.to_string() + " broke off: " + ec.message());
            return;
          }
          self->read_body();
        });
  }

  void arm(std::chrono::milliseconds d, std::string what) {
    timer_.cancel();
    if (d.count() <= 0) return;
    timer_.expires_after(d);
    timer_.async_wait([self = shared_from_this(), what](beast::error_code ec) {
      if (!ec) self->fail(what);
    });
  }

  void fail(const std::string& why) { finish(why); }

  void finish(const std::string& error) {
    if (done_) return;
    done_ = true;
    timer_.cancel();
    total_timer_.cancel();
    resolver_.cancel();
    beast::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_both, ec);
    socket_.close(ec);
    auto on_done = std::move(cb_.on_done);
    cb_ = {};
    if (on_done) on_done(error);
  }

  net::strand<net::io_context::executor_type> strand_;
  tcp::socket socket_;
  tcp::resolver resolver_;
  net::steady_timer timer_;
  net::steady_timer total_timer_;
  Url url_;
  ClientRequest req_;
  ClientCallbacks cb_;
  ClientTimeouts timeouts_;
  std::string out_;
  beast::flat_buffer buffer_;
  http::response_parser<http::buffer_body> parser_;
  char body_buf_[16384];
  bool done_ = false;
};

}  // namespace

std::shared_ptr<ClientCall> http_request(IoRuntime& io, const Url& url, ClientRequest request,
                                         ClientCallbacks callbacks, ClientTimeouts timeouts) {
  auto call = std::make_shared<Call>(io, url, std::move(request), std::move(callbacks), timeouts);
  call->start();
  return call;
}

}  // namespace tessera::serving
