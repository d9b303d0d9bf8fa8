#include "tests/runtime/serving/metrics_text.h"

#include <cmath>
#include <cstdlib>
#include <set>
#include <sstream>

namespace tessera::serving::testing {
namespace {

bool valid_metric_name(const std::string& n) {
  if (n.empty()) return false;
  for (size_t i = 0; i < n.size(); ++i) {
    const char c = n[i];
    if (!(std::isalpha(static_cast<unsigned char>(c)) || c == '_' || c == ':' ||
          (i > 0 && std::isdigit(static_cast<unsigned char>(c))))) {
      return false;
    }
  }
  return true;
}

bool parse_value(const std::string& s, double& v) {
  if (s == "+Inf" || s == "Inf") {
    v = INFINITY;
    return true;
  }
  if (s == "-Inf") {
    v = -INFINITY;
    return true;
  }
  if (s == "NaN") {
    v = NAN;
    return true;
  }
  char* end = nullptr;
  v = std::strtod(s.c_str(), &end);
  return !s.empty() && end == s.c_str() + s.size();
}

// The family a sample belongs to, given the declared types.
std::string family_of(const std::string& sample, const std::map<std::string, std::string>& types) {
  for (const char* suffix : {"_bucket", "_sum", "_count"}) {
    const std::string sfx = suffix;
    if (sample.size() > sfx.size() &&
        sample.compare(sample.size() - sfx.size(), sfx.size(), sfx) == 0) {
      const std::string base = sample.substr(0, sample.size() - sfx.size());
      auto it = types.find(base);
      if (it != types.end() && (it->second == "histogram" || it->second == "summary")) return base;
    }
  }
  return sample;
}

}  // namespace

double MetricsText::value(const std::string& name,
                          const std::map<std::string, std::string>& labels) const {
  for (const auto& s : samples) {
    if (s.name == name && s.labels == labels) return s.value;
  }
  return NAN;
}

MetricsText parse_metrics(const std::string& text) {
  MetricsText m;
  auto error = [&](int line, const std::string& what) {
    m.errors.push_back("line " + std::to_string(line) + ": " + what);
  };
  if (text.empty() || text.back() != '\n') m.errors.push_back("the text must end with a newline");
  std::set<std::string> helped, finished_families, seen_samples;
  std::string current;  // the family whose lines are being read
  std::istringstream in(text);
  std::string line;
  int n = 0;
  auto enter = [&](const std::string& family, int ln) {
    if (family == current) return;
    if (finished_families.count(family)) error(ln, "lines of " + family + " are not together");
    if (!current.empty()) finished_families.insert(current);
    current = family;
  };
  while (std::getline(in, line)) {
    ++n;
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::istringstream ls(line);
      std::string hash, kind, name;
      ls >> hash >> kind >> name;
      if (kind != "HELP" && kind != "TYPE") continue;  // a plain comment
      if (!valid_metric_name(name)) error(n, "bad metric name '" + name + "'");
      enter(name, n);
      if (kind == "HELP") {
        if (!helped.insert(name).second) error(n, "second HELP for " + name);
        const std::string help = line.size() > 8 + name.size() ? line.substr(8 + name.size()) : "";
        for (size_t i = 0; i < help.size(); ++i) {
          if (help[i] == '\\' &&
              (i + 1 >= help.size() || (help[i + 1] != '\\' && help[i + 1] != 'n'))) {
            error(n, "bad escape in HELP of " + name);
          }
          if (help[i] == '\\') ++i;
        }
      } else {
        std::string type;
        ls >> type;
        if (m.types.count(name)) error(n, "second TYPE for " + name);
        static const std::set<std::string> kinds = {"counter", "gauge", "histogram", "summary",
                                                    "untyped"};
        if (!kinds.count(type)) error(n, "unknown type '" + type + "'");
        for (const auto& s : m.samples) {
          if (family_of(s.name, {{name, type}}) == name) error(n, "TYPE after samples of " + name);
        }
        m.types[name] = type;
      }
      continue;
    }
    MetricSample s;
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    s.name = line.substr(0, i);
    if (!valid_metric_name(s.name)) error(n, "bad sample name '" + s.name + "'");
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        size_t eq = line.find('=', i);
        if (eq == std::string::npos) {
          error(n, "bad label set");
          break;
        }
        const std::string lname = line.substr(i, eq - i);
        if (!valid_metric_name(lname) || lname.find(':') != std::string::npos) {
          error(n, "bad label name '" + lname + "'");
        }
        if (eq + 1 >= line.size() || line[eq + 1] != '"') {
          error(n, "label value not quoted");
          break;
        }
        std::string value;
        size_t j = eq + 2;
        for (; j < line.size() && line[j] != '"'; ++j) {
          if (line[j] == '\\') {
            ++j;
            if (j >= line.size()) break;
            if (line[j] == 'n') {
              value.push_back('\n');
            } else if (line[j] == '\\' || line[j] == '"') {
              value.push_back(line[j]);
            } else {
              error(n, "bad escape in a label value");
            }
          } else {
            value.push_back(line[j]);
          }
        }
        if (j >= line.size()) {
          error(n, "unterminated label value");
          break;
        }
        if (s.labels.count(lname)) error(n, "label " + lname + " twice");
        s.labels[lname] = value;
        i = j + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      ++i;  // '}'
    }
    if (i >= line.size() || line[i] != ' ') {
      error(n, "no value");
      continue;
    }
    std::string rest = line.substr(i + 1);
    const size_t sp = rest.find(' ');
    const std::string value = rest.substr(0, sp);  // a timestamp may follow
    if (!parse_value(value, s.value)) error(n, "bad value '" + value + "'");
    const std::string family = family_of(s.name, m.types);
    if (!m.types.count(family)) error(n, "sample of " + family + " before its TYPE");
    enter(family, n);
    std::string key = s.name;
    for (const auto& [k, v] : s.labels) key += "|" + k + "=" + v;
    if (!seen_samples.insert(key).second) error(n, "duplicate sample " + key);
    m.samples.push_back(std::move(s));
  }
  // Histograms: per label set, buckets ascending and cumulative, +Inf == _count, a _sum.
  for (const auto& [family, type] : m.types) {
    if (type != "histogram") continue;
    std::map<std::map<std::string, std::string>, std::vector<std::pair<double, double>>> buckets;
    for (const auto& s : m.samples) {
      if (s.name != family + "_bucket") continue;
      auto labels = s.labels;
      auto le = labels.find("le");
      if (le == labels.end()) {
        m.errors.push_back(family + ": bucket without le");
        continue;
      }
      double bound;
      if (!parse_value(le->second, bound)) m.errors.push_back(family + ": bad le " + le->second);
      labels.erase(le);
      buckets[labels].push_back({bound, s.value});
    }
    for (const auto& [labels, bs] : buckets) {
      for (size_t k = 1; k < bs.size(); ++k) {
        if (!(bs[k].first > bs[k - 1].first)) m.errors.push_back(family + ": le not ascending");
        if (bs[k].second < bs[k - 1].second) m.errors.push_back(family + ": not cumulative");
      }
      if (bs.empty() || !std::isinf(bs.back().first)) {
        m.errors.push_back(family + ": no +Inf bucket");
        continue;
      }
      const double count = m.value(family + "_count", labels);
      if (std::isnan(count) || count != bs.back().second) {
        m.errors.push_back(family + ": +Inf bucket differs from _count");
      }
      if (std::isnan(m.value(family + "_sum", labels))) m.errors.push_back(family + ": no _sum");
    }
  }
  return m;
}

}  // namespace tessera::serving::testing
