#include "runtime/serving/http_server.h"

#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>

#include <atomic>
#include <cctype>
#include <deque>
#include <mutex>
#include <optional>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "common/error.h"
#include "common/logging.h"
#include "runtime/serving/io_runtime_impl.h"

namespace tessera::serving {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = net::ip::tcp;

class Session;

struct HttpServer::State : std::enable_shared_from_this<HttpServer::State> {
  State(IoRuntime& io_, HttpServerOptions o, Handler h)
      : io(io_), opt(std::move(o)), handler(std::move(h)) {}
  IoRuntime& io;
  HttpServerOptions opt;
  Handler handler;
  std::optional<tcp::acceptor> acceptor;
  int port = 0;
  std::atomic<bool> accepting{false};
  std::atomic<bool> draining{false};
  std::atomic<size_t> connections{0};
  std::atomic<size_t> exchanges{0};
  std::mutex mu;
  std::unordered_map<Session*, std::weak_ptr<Session>> sessions;

  void do_accept();
  void reject(tcp::socket socket);
  std::vector<std::shared_ptr<Session>> live_sessions() {
    std::lock_guard lock(mu);
    std::vector<std::shared_ptr<Session>> out;
    for (auto& [p, w] : sessions) {
      if (auto s = w.lock()) out.push_back(std::move(s));
    }
    return out;
  }
};

namespace {

std::string sanitize_header_value(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c != '\r' && c != '\n') out.push_back(c);
  }
  return out;
}

std::string head_text(int status, std::string_view content_type, const Headers& extra,
                      bool keep_alive, std::optional<size_t> content_length, bool chunked) {
  std::string s = "HTTP/1.1 " + std::to_string(status) + " " + std::string(status_reason(status)) +
                  "\r\nServer: tessera\r\n";
  if (!content_type.empty()) s += "Content-Type: " + sanitize_header_value(content_type) + "\r\n";
  if (content_length) s += "Content-Length: " + std::to_string(*content_length) + "\r\n";
  if (chunked) s += "Transfer-Encoding: chunked\r\n";
  for (const auto& [k, v] : extra) {
    s += sanitize_header_value(k) + ": " + sanitize_header_value(v) + "\r\n";
  }
  if (!keep_alive) s += "Connection: close\r\n";
  s += "\r\n";
  return s;
}

std::string to_lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

using RequestParser = http::request_parser<http::string_body>;

void apply_limits(RequestParser& p, const HttpServerOptions& opt) {
  p.header_limit(static_cast<uint32_t>(opt.max_header_bytes));
  p.body_limit(opt.max_body_bytes);
}

// The answer to a request the parser refused (the connection closes after it). `body`: the error
// came while reading the body.
std::pair<int, std::string> refusal(beast::error_code ec, const HttpServerOptions& opt, bool body) {
  if (ec == http::error::body_limit) {
    return {413, "request body is larger than the limit of " + std::to_string(opt.max_body_bytes) +
                     " bytes"};
  }
  if (ec == http::error::header_limit && !body) {
    return {431, "request header is larger than the limit of " +
                     std::to_string(opt.max_header_bytes) + " bytes"};
  }
  return {400,
          (body ? "malformed HTTP request body: " : "malformed HTTP request: ") + ec.message()};
}

HttpRequest to_http_request(http::request<http::string_body>&& msg) {
  HttpRequest req;
  req.method = std::string(msg.method_string());
  req.target = std::string(msg.target());
  req.path = req.target.substr(0, req.target.find('?'));
  req.keep_alive = msg.keep_alive();
  for (const auto& f : msg) {
    const auto name = f.name_string();
    const auto value = f.value();
    req.headers.emplace_back(to_lower(std::string_view(name.data(), name.size())),
                             std::string(value.data(), value.size()));
  }
  req.body = std::move(msg.body());
  return req;
}

}  // namespace

HttpParseResult parse_http_request(std::string_view bytes, const HttpServerOptions& options) {
  HttpParseResult out;
  RequestParser p;
  apply_limits(p, options);
  p.eager(true);
  beast::error_code ec;
  while (!p.is_done()) {
    const size_t n =
        p.put(net::buffer(bytes.data() + out.consumed, bytes.size() - out.consumed), ec);
    out.consumed += n;
    if (ec == http::error::need_more) {
      out.status = -1;
      return out;
    }
    if (ec) {
      std::tie(out.status, out.error) = refusal(ec, options, p.is_header_done());
      return out;
    }
    if (n == 0 && !p.is_done()) {  // nothing taken and no error: only more bytes can help
      out.status = -1;
      return out;
    }
  }
  out.request = to_http_request(p.release());
  return out;
}

class ExchangeImpl;

// One TCP connection. Every member is touched only on the connection's strand (the socket's
// executor).
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, std::shared_ptr<HttpServer::State> st)
      : socket_(std::move(socket)),
        st_(std::move(st)),
        read_timer_(socket_.get_executor()),
        write_timer_(socket_.get_executor()) {}

  ~Session() {
    if (!closed_) st_->connections--;
  }

  auto executor() { return socket_.get_executor(); }

  void start() {
    {
      std::lock_guard lock(st_->mu);
      st_->sessions[this] = weak_from_this();
    }
    beast::error_code ec;
    socket_.set_option(tcp::no_delay(true), ec);
    do_read();
  }

  enum class After { kNothing, kEndExchange, kClose };
  void queue_write(std::string data, After after);
  void on_drain() {
    if (!exchange_ && !closed_) graceful_close();
  }
  void lost();  // the connection is gone (or cut): fail the pending exchange, close
  bool draining() const { return st_->draining.load(); }
  const HttpServerOptions& opt() const { return st_->opt; }

 private:
  void do_read();
  void on_header(beast::error_code ec);
  void on_body(beast::error_code ec);
  void dispatch();
  void watch();
  void on_watch(beast::error_code ec, size_t n);
  void do_write();
  void finish_exchange();
  void reply_and_close(int status, std::string_view message);
  void graceful_close();
  void arm_read_timer(std::chrono::milliseconds d);
  void unregister();

  struct Out {
    std::string data;
    After after;
  };

  tcp::socket socket_;
  std::shared_ptr<HttpServer::State> st_;
  net::steady_timer read_timer_;
  net::steady_timer write_timer_;
  beast::flat_buffer buffer_;
  std::optional<RequestParser> parser_;
  std::shared_ptr<ExchangeImpl> exchange_;
  bool closed_ = false;
  bool reading_ = false;
  uint64_t read_seq_ = 0;
  bool watching_ = false;
  bool resume_after_watch_ = false;
  std::deque<Out> outq_;
  bool writing_ = false;
  size_t pending_bytes_ = 0;
  char discard_[4096];
};

class ExchangeImpl : public Exchange, public std::enable_shared_from_this<ExchangeImpl> {
 public:
  ExchangeImpl(std::shared_ptr<Session> s, HttpRequest r, bool chunked)
      : session_(std::move(s)), req_(std::move(r)), chunked_(chunked) {}

  const HttpRequest& request() const override { return req_; }

  void respond(HttpResponse resp) override {
    run([this, resp = std::move(resp)] {
      if (started_ || disconnected_) return;
      started_ = done_ = true;
      callbacks_.clear();  // they may hold the exchange's owner: no cycle once it is answered
      const bool ka = keep_alive();
      std::string data =
          head_text(resp.status, resp.content_type, resp.headers, ka, resp.body.size(), false) +
          resp.body;
      session_->queue_write(std::move(data),
                            ka ? Session::After::kEndExchange : Session::After::kClose);
    });
  }

  void start_stream(int status, std::string content_type, Headers headers) override {
    run([this, status, ct = std::move(content_type), hs = std::move(headers)] {
      if (started_ || disconnected_) return;
      started_ = streaming_ = true;
      session_->queue_write(
          head_text(status, ct, hs, chunked_ && keep_alive(), std::nullopt, chunked_),
          Session::After::kNothing);
    });
  }

  void send_chunk(std::string data) override {
    run([this, data = std::move(data)]() mutable {
      if (!streaming_ || done_ || disconnected_ || data.empty()) return;
      if (chunked_) {
        char len[32];
        std::snprintf(len, sizeof len, "%zx\r\n", data.size());
        data = len + data + "\r\n";
      }
      session_->queue_write(std::move(data), Session::After::kNothing);
    });
  }

  void end_stream() override {
    run([this] {
      if (!streaming_ || done_ || disconnected_) return;
      done_ = true;
      callbacks_.clear();
      const bool ka = chunked_ && keep_alive();
      session_->queue_write(chunked_ ? "0\r\n\r\n" : "",
                            ka ? Session::After::kEndExchange : Session::After::kClose);
    });
  }

  void on_disconnect(std::function<void()> fn) override {
    run([this, fn = std::move(fn)] {
      if (disconnected_) {
        fn();
      } else if (!done_) {
        callbacks_.push_back(fn);
      }
    });
  }

  void post(std::function<void()> fn) override {
    net::post(session_->executor(), [self = shared_from_this(), fn = std::move(fn)] { fn(); });
  }

  bool disconnected() const override { return disconnected_.load(); }

  // On the strand.
  void mark_disconnected() {
    if (disconnected_) return;
    disconnected_ = true;
    auto cbs = std::move(callbacks_);
    callbacks_.clear();
    for (auto& cb : cbs) {
      try {
        cb();
      } catch (const std::exception& e) {
        log::error("serving: disconnect callback raised: {}", e.what());
      }
    }
  }
  bool done() const { return done_; }

 private:
  bool keep_alive() const { return req_.keep_alive && !session_->draining(); }
  template <typename F>
  void run(F&& f) {
    net::dispatch(session_->executor(),
                  [self = shared_from_this(), f = std::forward<F>(f)]() mutable { f(); });
  }

  std::shared_ptr<Session> session_;
  HttpRequest req_;
  bool chunked_;
  bool started_ = false, streaming_ = false, done_ = false;
  std::atomic<bool> disconnected_{false};
  std::vector<std::function<void()>> callbacks_;
};

void Session::arm_read_timer(std::chrono::milliseconds d) {
  const uint64_t seq = ++read_seq_;
  read_timer_.expires_after(d);
  read_timer_.async_wait([self = shared_from_this(), seq](beast::error_code ec) {
    if (ec || seq != self->read_seq_ || !self->reading_ || self->closed_) return;
    // A client too slow to send its request: drop the connection.
    self->lost();
  });
}

void Session::do_read() {
  if (closed_) return;
  if (draining()) {
    graceful_close();
    return;
  }
  parser_.emplace();
  apply_limits(*parser_, opt());
  reading_ = true;
  arm_read_timer(opt().header_timeout);
  http::async_read_header(
      socket_, buffer_, *parser_,
      [self = shared_from_this()](beast::error_code ec, size_t) { self->on_header(ec); });
}

void Session::on_header(beast::error_code ec) {
  if (closed_) return;
  if (ec) {
    reading_ = false;
    ++read_seq_;
    read_timer_.cancel();
    if (ec == http::error::end_of_stream || ec == net::error::eof ||
        ec == net::error::connection_reset || ec == net::error::operation_aborted) {
      lost();
    } else {
      const auto [status, message] = refusal(ec, opt(), false);
      reply_and_close(status, message);
    }
    return;
  }
  if (draining()) {
    reading_ = false;
    read_timer_.cancel();
    reply_and_close(503, "the server is shutting down");
    return;
  }
  if (parser_->is_done()) {
    reading_ = false;
    ++read_seq_;
    read_timer_.cancel();
    dispatch();
    return;
  }
  // Clients that wait for permission before a large body (curl does above 1 KiB).
  const auto& h = parser_->get();
  auto expect = h.find(http::field::expect);
  if (expect != h.end() &&
      to_lower(std::string(expect->value().data(), expect->value().size())) == "100-continue") {
    queue_write("HTTP/1.1 100 Continue\r\n\r\n", After::kNothing);
  }
  arm_read_timer(opt().body_timeout);
  http::async_read(socket_, buffer_, *parser_,
                   [self = shared_from_this()](beast::error_code e, size_t) { self->on_body(e); });
}

void Session::on_body(beast::error_code ec) {
  if (closed_) return;
  reading_ = false;
  ++read_seq_;
  read_timer_.cancel();
  if (ec) {
    if (ec != http::error::body_limit &&
        (ec == net::error::eof || ec == http::error::end_of_stream ||
         ec == net::error::operation_aborted || ec == net::error::connection_reset)) {
      lost();
    } else {
      const auto [status, message] = refusal(ec, opt(), true);
      reply_and_close(status, message);
    }
    return;
  }
  dispatch();
}

void Session::dispatch() {
  auto msg = parser_->release();
  parser_.reset();
  const bool chunked = msg.version() >= 11;
  HttpRequest req = to_http_request(std::move(msg));
  req.arrival = std::chrono::steady_clock::now();
  exchange_ = std::make_shared<ExchangeImpl>(shared_from_this(), std::move(req), chunked);
  st_->exchanges++;
  watch();
  auto ex = exchange_;
  try {
    st_->handler(ex);
  } catch (const std::exception& e) {
    log::error("serving: handler raised: {}", e.what());
    ex->respond(error_response(500, std::string("internal error: ") + e.what()));
  }
}

// Keeps a read posted while the response is pending, so a client that goes away is noticed at once
// (its request is aborted) rather than at the next write. Bytes that arrive (a pipelined request)
// stay in the buffer for the next parse.
void Session::watch() {
  if (watching_ || closed_ || buffer_.size() >= (64u << 10)) return;
  watching_ = true;
  socket_.async_read_some(
      buffer_.prepare(4096),
      [self = shared_from_this()](beast::error_code ec, size_t n) { self->on_watch(ec, n); });
}

void Session::on_watch(beast::error_code ec, size_t n) {
  watching_ = false;
  if (!ec) buffer_.commit(n);
  if (closed_) return;
  if (resume_after_watch_) {
    resume_after_watch_ = false;
    if (!ec || ec == net::error::operation_aborted) {
      do_read();
    } else {
      lost();
    }
    return;
  }
  if (ec) {
    lost();
    return;
  }
  if (exchange_) watch();
}

void Session::queue_write(std::string data, After after) {
  if (closed_) return;
  pending_bytes_ += data.size();
  const bool chunk = after == After::kNothing;
  outq_.push_back({std::move(data), after});
  // Only a stream is held to the limit: a whole response of any size is written once.
  if (chunk && pending_bytes_ > opt().max_pending_write_bytes) {
    log::warn("serving: client reads too slowly ({} bytes pending); closing", pending_bytes_);
    lost();
    return;
  }
  if (!writing_) do_write();
}

void Session::do_write() {
  if (closed_ || outq_.empty()) return;
  writing_ = true;
  write_timer_.expires_after(opt().write_timeout);
  write_timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
    if (!ec && self->writing_) self->lost();
  });
  net::async_write(socket_, net::buffer(outq_.front().data),
                   [self = shared_from_this()](beast::error_code ec, size_t) {
                     self->writing_ = false;
                     self->write_timer_.cancel();
                     if (self->closed_) return;
                     if (ec) {
                       self->lost();
                       return;
                     }
                     Out item = std::move(self->outq_.front());
                     self->outq_.pop_front();
                     self->pending_bytes_ -= item.data.size();
                     if (item.after == After::kEndExchange) self->finish_exchange();
                     if (item.after == After::kClose) {
                       if (self->exchange_) {
                         self->exchange_.reset();
                         self->st_->exchanges--;
                       }
                       self->graceful_close();
                       return;
                     }
                     if (!self->outq_.empty()) self->do_write();
                   });
}

void Session::finish_exchange() {
  if (exchange_) {
    exchange_.reset();
    st_->exchanges--;
  }
  if (draining()) {
    graceful_close();
  } else if (watching_) {
    // The read posted by watch() would race the next request's read: cancel it and continue
    // from its completion.
    resume_after_watch_ = true;
    beast::error_code ec;
    socket_.cancel(ec);
  } else {
    do_read();
  }
}

void Session::reply_and_close(int status, std::string_view message) {
  if (opt().on_refused) {
    try {
      opt().on_refused(status);
    } catch (const std::exception& e) {
      log::error("serving: on_refused raised: {}", e.what());
    }
  }
  HttpResponse r = error_response(status, message);
  queue_write(head_text(r.status, r.content_type, r.headers, false, r.body.size(), false) + r.body,
              After::kClose);
}

void Session::unregister() {
  std::lock_guard lock(st_->mu);
  st_->sessions.erase(this);
}

// Sends what was queued, then shuts the sending side and discards what the client still sends
// for a moment, so that an error response is not destroyed by a reset.
void Session::graceful_close() {
  if (closed_) return;
  closed_ = true;
  st_->connections--;
  unregister();
  beast::error_code ec;
  socket_.shutdown(tcp::socket::shutdown_send, ec);
  read_timer_.expires_after(std::chrono::milliseconds(500));
  read_timer_.async_wait([self = shared_from_this()](beast::error_code) {
    beast::error_code e;
    self->socket_.close(e);
  });
  // A read already posted (a watch, or an idle connection's header read) drains until the timer
  // closes the socket; two reads at once on one socket are not allowed.
  if (watching_ || reading_) return;
  struct Drain {
    std::shared_ptr<Session> self;
    void operator()(beast::error_code ec, size_t) {
      if (ec) {
        self->read_timer_.cancel();
        beast::error_code e;
        self->socket_.close(e);
        return;
      }
      self->socket_.async_read_some(net::buffer(self->discard_), std::move(*this));
    }
  };
  socket_.async_read_some(net::buffer(discard_), Drain{shared_from_this()});
}

void Session::lost() {
  if (closed_) return;
  closed_ = true;
  st_->connections--;
  unregister();
  reading_ = false;
  read_timer_.cancel();
  write_timer_.cancel();
  beast::error_code ec;
  socket_.shutdown(tcp::socket::shutdown_both, ec);
  socket_.close(ec);
  if (exchange_) {
    auto ex = std::move(exchange_);
    exchange_.reset();
    st_->exchanges--;
    ex->mark_disconnected();
  }
  outq_.clear();
  pending_bytes_ = 0;
}

void HttpServer::State::do_accept() {
  acceptor->async_accept(net::make_strand(io.impl().ioc),
                         [self = shared_from_this()](beast::error_code ec, tcp::socket socket) {
                           if (!self->accepting) return;
                           if (ec) {
                             log::warn("serving: accept failed: {}", ec.message());
                             // Out of descriptors and the like: try again a little later rather
                             // than spin.
                             auto t = std::make_shared<net::steady_timer>(self->io.impl().ioc);
                             t->expires_after(std::chrono::milliseconds(50));
                             t->async_wait([self, t](beast::error_code) {
                               if (self->accepting)
                                 net::post(self->acceptor->get_executor(),
                                           [self] { self->do_accept(); });
                             });
                             return;
                           }
                           if (self->connections.load() >= self->opt.max_connections) {
                             self->reject(std::move(socket));
                           } else {
                             self->connections++;
                             auto session = std::make_shared<Session>(std::move(socket), self);
                             net::dispatch(session->executor(), [session] { session->start(); });
                           }
                           self->do_accept();
                         });
}

void HttpServer::State::reject(tcp::socket socket) {
  auto sock = std::make_shared<tcp::socket>(std::move(socket));
  const HttpResponse r = error_response(
      503, "too many connections (limit " + std::to_string(opt.max_connections) + ")");
  auto data = std::make_shared<std::string>(
      head_text(r.status, r.content_type, {{"Retry-After", "1"}}, false, r.body.size(), false) +
      r.body);
  net::async_write(*sock, net::buffer(*data), [sock, data](beast::error_code, size_t) {
    beast::error_code ec;
    sock->shutdown(tcp::socket::shutdown_both, ec);
    sock->close(ec);
  });
}

HttpServer::HttpServer(IoRuntime& io, HttpServerOptions options, Handler handler)
    : state_(std::make_shared<State>(io, std::move(options), std::move(handler))) {}

// Posts nothing: the I/O loop may already be stopped. Owners call stop_accepting() / close_all()
// while it runs.
HttpServer::~HttpServer() { state_->accepting = false; }

void HttpServer::start() {
  auto& ioc = state_->io.impl().ioc;
  const auto& opt = state_->opt;
  tcp::endpoint endpoint;
  beast::error_code ec;
  auto address = net::ip::make_address(opt.host, ec);
  if (ec) {
    tcp::resolver resolver(ioc);
    auto results = resolver.resolve(opt.host, std::to_string(opt.port), ec);
    TESSERA_CHECK(!ec && !results.empty(), "cannot resolve host '", opt.host, "': ", ec.message());
    endpoint = results.begin()->endpoint();
  } else {
    endpoint = tcp::endpoint(address, static_cast<unsigned short>(opt.port));
  }
  TESSERA_CHECK(opt.port >= 0 && opt.port <= 65535, "port must be in [0, 65535], got ", opt.port);
  state_->acceptor.emplace(net::make_strand(ioc));
  auto& acc = *state_->acceptor;
  acc.open(endpoint.protocol(), ec);
  TESSERA_CHECK(!ec, "cannot open a socket for ", opt.host, ":", opt.port, ": ", ec.message());
  acc.set_option(net::socket_base::reuse_address(true), ec);
  acc.bind(endpoint, ec);
  TESSERA_CHECK(!ec, "cannot bind ", opt.host, ":", opt.port, ": ", ec.message());
  acc.listen(net::socket_base::max_listen_connections, ec);
  TESSERA_CHECK(!ec, "cannot listen on ", opt.host, ":", opt.port, ": ", ec.message());
  state_->port = acc.local_endpoint().port();
  state_->accepting = true;
  net::post(acc.get_executor(), [st = state_] { st->do_accept(); });
}

int HttpServer::port() const { return state_->port; }
const HttpServerOptions& HttpServer::options() const { return state_->opt; }

void HttpServer::stop_accepting() {
  if (!state_->accepting.exchange(false) || !state_->acceptor) return;
  net::post(state_->acceptor->get_executor(), [st = state_] {
    beast::error_code ec;
    st->acceptor->close(ec);
  });
}

void HttpServer::drain() {
  state_->draining = true;
  for (auto& s : state_->live_sessions()) net::post(s->executor(), [s] { s->on_drain(); });
}

void HttpServer::close_all() {
  for (auto& s : state_->live_sessions()) net::post(s->executor(), [s] { s->lost(); });
}

size_t HttpServer::open_connections() const { return state_->connections.load(); }
size_t HttpServer::active_exchanges() const { return state_->exchanges.load(); }

}  // namespace tessera::serving
