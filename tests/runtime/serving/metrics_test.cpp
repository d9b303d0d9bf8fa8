// The Prometheus registry renders text the exposition-format checker accepts, and the checker
// (tests/runtime/serving/metrics_text.h) itself rejects each broken rule.
#include "runtime/serving/metrics.h"

#include <gtest/gtest.h>

#include <cmath>

#include "tests/runtime/serving/metrics_text.h"

namespace tessera::serving {
namespace {

using testing::parse_metrics;

TEST(Metrics, RenderFollowsTheExpositionRules) {
  MetricsRegistry r;
  auto& c = r.counter("t_requests_total", "Requests.\nSecond line \\ slash", {"code"});
  auto& g = r.gauge("t_running", "Running.");
  auto& h = r.histogram("t_latency_seconds", "Latency.", {"model"}, {0.1, 0.5, 1});
  c.inc({"200"}, 3);
  c.inc({"a \"quoted\"\nvalue\\"});
  g.set({}, 2.5);
  for (double v : {0.05, 0.1, 0.3, 0.7, 2.0}) h.observe({"m"}, v);
  const std::string text = r.render();
  auto m = parse_metrics(text);
  EXPECT_EQ(m.errors, std::vector<std::string>{}) << text;
  EXPECT_EQ(m.value("t_requests_total", {{"code", "200"}}), 3);
  EXPECT_EQ(m.value("t_requests_total", {{"code", "a \"quoted\"\nvalue\\"}}), 1);
  EXPECT_EQ(m.value("t_running"), 2.5);
  // le is inclusive: 0.1 falls in the 0.1 bucket.
  EXPECT_EQ(m.value("t_latency_seconds_bucket", {{"model", "m"}, {"le", "0.1"}}), 2);
  EXPECT_EQ(m.value("t_latency_seconds_bucket", {{"model", "m"}, {"le", "0.5"}}), 3);
  EXPECT_EQ(m.value("t_latency_seconds_bucket", {{"model", "m"}, {"le", "1"}}), 4);
  EXPECT_EQ(m.value("t_latency_seconds_bucket", {{"model", "m"}, {"le", "+Inf"}}), 5);
  EXPECT_EQ(m.value("t_latency_seconds_count", {{"model", "m"}}), 5);
  EXPECT_NEAR(m.value("t_latency_seconds_sum", {{"model", "m"}}), 3.15, 1e-12);
  EXPECT_NE(text.find("# HELP t_requests_total Requests.\\nSecond line \\\\ slash\n"),
            std::string::npos);
  EXPECT_EQ(m.types["t_latency_seconds"], "histogram");
  EXPECT_THROW(r.counter("t_running", "again"), std::exception);
  EXPECT_THROW(c.inc({"200"}, -1), std::exception);
  EXPECT_THROW(c.inc({}), std::exception);  // wrong label count
}

TEST(Metrics, TheCheckerRejectsEachBrokenRule) {
  const std::string ok =
      "# HELP a_total A.\n# TYPE a_total counter\na_total 1\n"
      "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n"
      "h_sum 3\nh_count 2\n";
  EXPECT_TRUE(parse_metrics(ok).errors.empty()) << parse_metrics(ok).errors[0];
  const std::vector<std::pair<std::string, std::string>> broken = {
      {"no final newline", "# TYPE a counter\na 1"},
      {"two HELP", "# HELP a x\n# HELP a y\n# TYPE a counter\na 1\n"},
      {"two TYPE", "# TYPE a counter\n# TYPE a counter\na 1\n"},
      {"sample before TYPE", "a 1\n# TYPE a counter\n"},
      {"family split", "# TYPE a gauge\n# TYPE b gauge\na{x=\"1\"} 1\nb 1\na{x=\"2\"} 1\n"},
      {"bad escape", "# TYPE a gauge\na{x=\"\\q\"} 1\n"},
      {"bad value", "# TYPE a gauge\na one\n"},
      {"duplicate", "# TYPE a gauge\na 1\na 2\n"},
      {"not cumulative",
       "# TYPE h histogram\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n"},
      {"+Inf != count",
       "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n"},
      {"no +Inf", "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n"},
      {"no sum", "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n"},
      {"le not ascending",
       "# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\n"
       "h_sum 1\nh_count 1\n"},
      {"bad name", "# TYPE 1a gauge\n1a 1\n"},
  };
  for (const auto& [what, text] : broken) {
    EXPECT_FALSE(parse_metrics(text).errors.empty()) << what;
  }
}

TEST(Metrics, ValuesFormat) {
  EXPECT_EQ(format_metric_value(3), "3");
  EXPECT_EQ(format_metric_value(0.25), "0.25");
  EXPECT_EQ(format_metric_value(INFINITY), "+Inf");
  EXPECT_EQ(format_metric_value(-INFINITY), "-Inf");
  EXPECT_EQ(format_metric_value(NAN), "NaN");
  EXPECT_EQ(escape_label_value("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
}

}  // namespace
}  // namespace tessera::serving
