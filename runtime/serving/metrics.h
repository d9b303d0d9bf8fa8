// Prometheus metrics (text exposition format 0.0.4): counters, gauges and histograms with labels,
// rendered with one HELP and TYPE per family, each family's samples together, histogram buckets
// cumulative and ascending with +Inf equal to _count, and label values escaped.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace tessera::serving {

using LabelValues = std::vector<std::string>;  // in the order of the family's label names

class MetricFamily {
 public:
  MetricFamily(std::string name, std::string help, std::vector<std::string> label_names);
  virtual ~MetricFamily() = default;
  const std::string& name() const { return name_; }
  virtual void render(std::string& out) const = 0;

 protected:
  void check_labels(const LabelValues& values) const;
  std::string label_text(const LabelValues& values, const std::string& extra_name = "",
                         const std::string& extra_value = "") const;
  void render_header(std::string& out, const char* type) const;

  std::string name_, help_;
  std::vector<std::string> label_names_;
  mutable std::mutex mu_;
};

class Counter : public MetricFamily {
 public:
  using MetricFamily::MetricFamily;
  void inc(const LabelValues& labels = {}, double by = 1.0);
  void set(const LabelValues& labels, double value);  // for values counted elsewhere (engine)
  double value(const LabelValues& labels = {}) const;
  void render(std::string& out) const override;

 private:
  std::map<LabelValues, double> values_;
};

class Gauge : public MetricFamily {
 public:
  using MetricFamily::MetricFamily;
  void set(const LabelValues& labels, double value);
  void clear();  // drops every labelled child (a model that was unloaded)
  double value(const LabelValues& labels = {}) const;
  void render(std::string& out) const override;

 private:
  std::map<LabelValues, double> values_;
};

class Histogram : public MetricFamily {
 public:
  Histogram(std::string name, std::string help, std::vector<std::string> label_names,
            std::vector<double> upper_bounds);
  void observe(const LabelValues& labels, double value);
  uint64_t count(const LabelValues& labels = {}) const;
  void render(std::string& out) const override;

 private:
  struct Child {
    std::vector<uint64_t> counts;  // per bucket, not cumulative; last = above every bound
    double sum = 0;
    uint64_t count = 0;
  };
  std::vector<double> bounds_;
  std::map<LabelValues, Child> children_;
};

class MetricsRegistry {
 public:
  Counter& counter(std::string name, std::string help, std::vector<std::string> labels = {});
  Gauge& gauge(std::string name, std::string help, std::vector<std::string> labels = {});
  Histogram& histogram(std::string name, std::string help, std::vector<std::string> labels,
                       std::vector<double> upper_bounds);
  // Runs before every render (reads the engines' stats into gauges).
  void on_collect(std::function<void()> fn);
  std::string render() const;

  static constexpr const char* kContentType = "text/plain; version=0.0.4; charset=utf-8";

 private:
  MetricFamily& add(std::unique_ptr<MetricFamily> f);
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<MetricFamily>> families_;
  std::vector<std::function<void()>> collectors_;
};

// Number formatting and escaping of the exposition format.
std::string format_metric_value(double v);
std::string escape_label_value(const std::string& v);
std::string escape_help(const std::string& v);

}  // namespace tessera::serving
