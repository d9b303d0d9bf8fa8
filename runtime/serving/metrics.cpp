#include "runtime/serving/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "common/error.h"

namespace tessera::serving {
namespace {

bool valid_name(const std::string& n, bool allow_colon) {
  if (n.empty()) return false;
  for (size_t i = 0; i < n.size(); ++i) {
    const char c = n[i];
    const bool alpha =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (allow_colon && c == ':');
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

}  // namespace

std::string format_metric_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, end);
}

std::string escape_label_value(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string escape_help(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

MetricFamily::MetricFamily(std::string name, std::string help, std::vector<std::string> labels)
    : name_(std::move(name)), help_(std::move(help)), label_names_(std::move(labels)) {
  TESSERA_CHECK(valid_name(name_, true), "invalid metric name '", name_, "'");
  for (const auto& l : label_names_) {
    TESSERA_CHECK(valid_name(l, false) && l != "le" && l.rfind("__", 0) != 0,
                  "invalid label name '", l, "' of metric ", name_);
  }
}

void MetricFamily::check_labels(const LabelValues& values) const {
  TESSERA_CHECK(values.size() == label_names_.size(), "metric ", name_, " takes ",
                label_names_.size(), " label values, got ", values.size());
}

std::string MetricFamily::label_text(const LabelValues& values, const std::string& extra_name,
                                     const std::string& extra_value) const {
  if (values.empty() && extra_name.empty()) return "";
  std::string s = "{";
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) s += ",";
    s += label_names_[i] + "=\"" + escape_label_value(values[i]) + "\"";
  }
  if (!extra_name.empty()) {
    if (!values.empty()) s += ",";
    s += extra_name + "=\"" + extra_value + "\"";
  }
  return s + "}";
}

void MetricFamily::render_header(std::string& out, const char* type) const {
  out += "# HELP " + name_ + " " + escape_help(help_) + "\n";
  out += "# TYPE " + name_ + " " + type + "\n";
}

void Counter::inc(const LabelValues& labels, double by) {
  check_labels(labels);
  TESSERA_CHECK(by >= 0, "counter ", name_, " can only go up, got an increment of ", by);
  std::lock_guard lock(mu_);
  values_[labels] += by;
}

void Counter::set(const LabelValues& labels, double value) {
  check_labels(labels);
  std::lock_guard lock(mu_);
  values_[labels] = value;
}

double Counter::value(const LabelValues& labels) const {
  std::lock_guard lock(mu_);
  auto it = values_.find(labels);
  return it == values_.end() ? 0.0 : it->second;
}

void Counter::render(std::string& out) const {
  std::lock_guard lock(mu_);
  render_header(out, "counter");
  if (values_.empty() && label_names_.empty()) out += name_ + " 0\n";
  for (const auto& [labels, v] : values_) {
    out += name_ + label_text(labels) + " " + format_metric_value(v) + "\n";
  }
}

void Gauge::set(const LabelValues& labels, double value) {
  check_labels(labels);
  std::lock_guard lock(mu_);
  values_[labels] = value;
}

void Gauge::clear() {
  std::lock_guard lock(mu_);
  values_.clear();
}

double Gauge::value(const LabelValues& labels) const {
  std::lock_guard lock(mu_);
  auto it = values_.find(labels);
  return it == values_.end() ? 0.0 : it->second;
}

void Gauge::render(std::string& out) const {
  std::lock_guard lock(mu_);
  render_header(out, "gauge");
  if (values_.empty() && label_names_.empty()) out += name_ + " 0\n";
  for (const auto& [labels, v] : values_) {
    out += name_ + label_text(labels) + " " + format_metric_value(v) + "\n";
  }
}

Histogram::Histogram(std::string name, std::string help, std::vector<std::string> label_names,
                     std::vector<double> upper_bounds)
    : MetricFamily(std::move(name), std::move(help), std::move(label_names)),
      bounds_(std::move(upper_bounds)) {
  TESSERA_CHECK(!bounds_.empty(), "histogram ", name_, " needs at least one bucket");
  for (size_t i = 0; i < bounds_.size(); ++i) {
    TESSERA_CHECK(std::isfinite(bounds_[i]) && (i == 0 || bounds_[i] > bounds_[i - 1]),
                  "histogram ", name_, ": bucket bounds must be finite and ascending, got ",
                  bounds_[i], " at ", i);
  }
}

void Histogram::observe(const LabelValues& labels, double value) {
  check_labels(labels);
  std::lock_guard lock(mu_);
  auto& c = children_[labels];
  if (c.counts.empty()) c.counts.assign(bounds_.size() + 1, 0);
  const size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  c.counts[i]++;  // le is inclusive: value == bound falls in that bucket
  c.sum += value;
  c.count++;
}

uint64_t Histogram::count(const LabelValues& labels) const {
  std::lock_guard lock(mu_);
  auto it = children_.find(labels);
  return it == children_.end() ? 0 : it->second.count;
}

void Histogram::render(std::string& out) const {
  std::lock_guard lock(mu_);
  render_header(out, "histogram");
  auto one = [&](const LabelValues& labels, const Child* c) {
    uint64_t cumulative = 0;
    for (size_t i = 0; i < bounds_.size(); ++i) {
      if (c) cumulative += c->counts[i];
      out += name_ + "_bucket" + label_text(labels, "le", format_metric_value(bounds_[i])) + " " +
             std::to_string(cumulative) + "\n";
    }
    const uint64_t total = c ? c->count : 0;
    out +=
        name_ + "_bucket" + label_text(labels, "le", "+Inf") + " " + std::to_string(total) + "\n";
    out += name_ + "_sum" + label_text(labels) + " " + format_metric_value(c ? c->sum : 0.0) + "\n";
    out += name_ + "_count" + label_text(labels) + " " + std::to_string(total) + "\n";
  };
  if (children_.empty() && label_names_.empty()) one({}, nullptr);
  for (const auto& [labels, c] : children_) one(labels, &c);
}

MetricFamily& MetricsRegistry::add(std::unique_ptr<MetricFamily> f) {
  std::lock_guard lock(mu_);
  for (const auto& g : families_) {
    TESSERA_CHECK(g->name() != f->name(), "metric ", f->name(), " registered twice");
  }
  families_.push_back(std::move(f));
  return *families_.back();
}

Counter& MetricsRegistry::counter(std::string name, std::string help,
                                  std::vector<std::string> labels) {
  return static_cast<Counter&>(
      add(std::make_unique<Counter>(std::move(name), std::move(help), std::move(labels))));
}

Gauge& MetricsRegistry::gauge(std::string name, std::string help, std::vector<std::string> labels) {
  return static_cast<Gauge&>(
      add(std::make_unique<Gauge>(std::move(name), std::move(help), std::move(labels))));
}

Histogram& MetricsRegistry::histogram(std::string name, std::string help,
                                      std::vector<std::string> labels,
                                      std::vector<double> upper_bounds) {
  return static_cast<Histogram&>(add(std::make_unique<Histogram>(
      std::move(name), std::move(help), std::move(labels), std::move(upper_bounds))));
}

void MetricsRegistry::on_collect(std::function<void()> fn) {
  std::lock_guard lock(mu_);
  collectors_.push_back(std::move(fn));
}

std::string MetricsRegistry::render() const {
  std::vector<std::function<void()>> collectors;
  {
    std::lock_guard lock(mu_);
    collectors = collectors_;
  }
  for (const auto& c : collectors) c();
  std::lock_guard lock(mu_);
  std::string out;
  for (const auto& f : families_) f->render(out);
  return out;
}

}  // namespace tessera::serving
