// A parser and checker of the Prometheus text exposition format (0.0.4) for the tests, written
// from the format's rules (prometheus/docs exposition_formats.md), not from our renderer: HELP and
// TYPE at most once per family and TYPE before its samples, a family's lines together, valid names
// and escapes, histogram buckets ascending and cumulative with +Inf equal to _count and a _sum.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace tessera::serving::testing {

struct MetricSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct MetricsText {
  std::map<std::string, std::string> types;  // family -> counter / gauge / histogram / ...
  std::vector<MetricSample> samples;
  std::vector<std::string> errors;  // every broken rule, with its line
  // The sample's value, or NaN when there is none.
  double value(const std::string& name,
               const std::map<std::string, std::string>& labels = {}) const;
};

MetricsText parse_metrics(const std::string& text);

}  // namespace tessera::serving::testing
