#include "runtime/training/train_config.h"

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numbers>
#include <sstream>
#include <vector>

#include "common/error.h"

namespace tessera::training {

namespace {

using json = nlohmann::json;

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

// One TOML value: a quoted string, a boolean, an integer or a float.
json toml_value(const std::string& raw, const std::string& where) {
  std::string v = trim(raw);
  TESSERA_CHECK(!v.empty(), where, ": missing value");
  if (v.front() == '"' || v.front() == '\'') {
    const char q = v.front();
    std::string out;
    size_t i = 1;
    for (; i < v.size() && v[i] != q; ++i) {
      if (q == '"' && v[i] == '\\' && i + 1 < v.size()) {
        const char c = v[++i];
        out += c == 'n' ? '\n' : (c == 't' ? '\t' : c);
      } else {
        out += v[i];
      }
    }
    TESSERA_CHECK(i < v.size(), where, ": unterminated string ", v);
    std::string rest = trim(v.substr(i + 1));
    TESSERA_CHECK(rest.empty() || rest.front() == '#', where,
                  ": unexpected text after string: ", rest);
    return out;
  }
  if (auto hash = v.find('#'); hash != std::string::npos) v = trim(v.substr(0, hash));
  if (v == "true") return true;
  if (v == "false") return false;
  std::string digits;
  for (char c : v) {
    if (c != '_') digits += c;
  }
  size_t used = 0;
  try {
    if (digits.find_first_of(".eE") == std::string::npos || digits.rfind("0x", 0) == 0) {
      const long long x = std::stoll(digits, &used, 0);
      if (used == digits.size()) return x;
    } else {
      const double x = std::stod(digits, &used);
      if (used == digits.size()) return x;
    }
  } catch (const std::exception&) {
  }
  TESSERA_FAIL(where, ": cannot read value ", v, " (expected a quoted string, number or boolean)");
}

// A value in an error message. A TOML string may hold any bytes, and dump() throws on invalid
// UTF-8 (a fuzzer's find: the error for a bad value became an uncaught json exception).
std::string shown(const json& v) { return v.dump(-1, ' ', false, json::error_handler_t::replace); }

template <typename T>
T get_as(const json& v, const std::string& key) {
  if constexpr (std::is_same_v<T, bool>) {
    TESSERA_CHECK(v.is_boolean(), "config key ", key, " must be a boolean, got ", shown(v));
    return v.get<bool>();
  } else if constexpr (std::is_same_v<T, std::string>) {
    TESSERA_CHECK(v.is_string(), "config key ", key, " must be a string, got ", shown(v));
    return v.get<std::string>();
  } else if constexpr (std::is_integral_v<T>) {
    TESSERA_CHECK(v.is_number_integer() ||
                      (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>()),
                  "config key ", key, " must be an integer, got ", shown(v));
    if (v.is_number_float()) {
      // A whole float (1e3) must also fit T: casting one that does not (1e300, -1.0 to uint64)
      // is undefined behaviour.
      const double x = v.get<double>();
      constexpr double lo = std::is_unsigned_v<T> ? 0.0 : -0x1p63;
      constexpr double hi = std::is_unsigned_v<T> ? 0x1p64 : 0x1p63;
      TESSERA_CHECK(x >= lo && x < hi, "config key ", key, " is out of range, got ", shown(v));
      return static_cast<T>(x);
    }
    if constexpr (std::is_unsigned_v<T>) {
      // An unsigned JSON integer past 2^63 (the seed as to_json writes it) is no negative number.
      TESSERA_CHECK(v.is_number_unsigned() || v.get<long long>() >= 0, "config key ", key,
                    " must be >= 0, got ", shown(v));
    }
    return v.get<T>();
  } else {
    TESSERA_CHECK(v.is_number(), "config key ", key, " must be a number, got ", shown(v));
    return v.get<T>();
  }
}

}  // namespace

const char* optimizer_name(OptimizerKind kind) {
  return kind == OptimizerKind::kAdamW ? "adamw" : "sgd";
}

json TrainConfig::read_file(const std::string& path) {
  std::ifstream in(path);
  TESSERA_CHECK(in.good(), "config file ", path, " cannot be read");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  const std::string ext = std::filesystem::path(path).extension().string();
  if (ext == ".json") {
    json j = json::parse(text, nullptr, false);
    TESSERA_CHECK(!j.is_discarded() && j.is_object(), "config file ", path,
                  " is not a JSON object");
    return j;
  }
  TESSERA_CHECK(ext == ".toml", "config file ", path,
                " must end in .json or .toml, got extension '", ext, "'");
  json j = json::object();
  std::string section;
  std::istringstream lines(text);
  std::string line;
  int lineno = 0;
  while (std::getline(lines, line)) {
    ++lineno;
    const std::string where = path + ":" + std::to_string(lineno);
    std::string t = trim(line);
    if (t.empty() || t.front() == '#') continue;
    if (t.front() == '[') {
      const auto close = t.find(']');
      TESSERA_CHECK(close != std::string::npos, where, ": unterminated section header ", t);
      section = trim(t.substr(1, close - 1));
      continue;
    }
    const auto eq = t.find('=');
    TESSERA_CHECK(eq != std::string::npos, where, ": expected 'key = value', got ", t);
    std::string key = trim(t.substr(0, eq));
    TESSERA_CHECK(!key.empty(), where, ": empty key");
    if (!section.empty()) key = section + "." + key;
    TESSERA_CHECK(!j.contains(key), where, ": key ", key, " appears twice");
    j[key] = toml_value(t.substr(eq + 1), where);
  }
  return j;
}

TrainConfig TrainConfig::from_json(const json& j, const TrainConfig& base) {
  TESSERA_CHECK(j.is_object(), "config must be an object, got ", shown(j));
  TrainConfig c = base;
  for (const auto& [raw_key, v] : j.items()) {
    std::string key = raw_key;
    for (auto& ch : key) {
      if (ch == '-') ch = '_';
    }
#define TESSERA_KEY(name)                      \
  if (key == #name) {                          \
    c.name = get_as<decltype(c.name)>(v, key); \
    continue;                                  \
  }
    TESSERA_KEY(model)
    TESSERA_KEY(data)
    TESSERA_KEY(dim)
    TESSERA_KEY(depth)
    TESSERA_KEY(heads)
    TESSERA_KEY(mlp_ratio)
    TESSERA_KEY(cluster_size)
    TESSERA_KEY(nearest)
    TESSERA_KEY(augment)
    TESSERA_KEY(lm_layers)
    TESSERA_KEY(lm_hidden)
    TESSERA_KEY(lm_heads)
    TESSERA_KEY(lm_kv_heads)
    TESSERA_KEY(lm_intermediate)
    TESSERA_KEY(seq_len)
    TESSERA_KEY(lm_window)
    TESSERA_KEY(steps)
    TESSERA_KEY(global_batch)
    TESSERA_KEY(micro_batch)
    TESSERA_KEY(lr)
    TESSERA_KEY(min_lr)
    TESSERA_KEY(warmup_steps)
    TESSERA_KEY(weight_decay)
    TESSERA_KEY(beta1)
    TESSERA_KEY(beta2)
    TESSERA_KEY(eps)
    TESSERA_KEY(momentum)
    TESSERA_KEY(clip_grad)
    TESSERA_KEY(bf16)
    TESSERA_KEY(seed)
    TESSERA_KEY(tp)
    TESSERA_KEY(zero)
    TESSERA_KEY(bucket_mb)
    TESSERA_KEY(checkpoint_dir)
    TESSERA_KEY(checkpoint_every)
    TESSERA_KEY(keep_checkpoints)
    TESSERA_KEY(resume)
    TESSERA_KEY(log)
    TESSERA_KEY(eval_every)
    TESSERA_KEY(progress)
#undef TESSERA_KEY
    if (key == "optimizer") {
      const std::string name = get_as<std::string>(v, key);
      if (name == "adamw") {
        c.optimizer = OptimizerKind::kAdamW;
      } else if (name == "sgd") {
        c.optimizer = OptimizerKind::kSgd;
      } else {
        TESSERA_FAIL("config key optimizer: unknown optimizer '", name,
                     "' (expected adamw or sgd)");
      }
      continue;
    }
    TESSERA_FAIL("unknown config key '", raw_key, "'");
  }
  return c;
}

json TrainConfig::to_json() const {
  return json{{"model", model},
              {"data", data},
              {"dim", dim},
              {"depth", depth},
              {"heads", heads},
              {"mlp_ratio", mlp_ratio},
              {"cluster_size", cluster_size},
              {"nearest", nearest},
              {"augment", augment},
              {"lm_layers", lm_layers},
              {"lm_hidden", lm_hidden},
              {"lm_heads", lm_heads},
              {"lm_kv_heads", lm_kv_heads},
              {"lm_intermediate", lm_intermediate},
              {"seq_len", seq_len},
              {"lm_window", lm_window},
              {"steps", steps},
              {"global_batch", global_batch},
              {"micro_batch", micro_batch},
              {"optimizer", optimizer_name(optimizer)},
              {"lr", lr},
              {"min_lr", min_lr},
              {"warmup_steps", warmup_steps},
              {"weight_decay", weight_decay},
              {"beta1", beta1},
              {"beta2", beta2},
              {"eps", eps},
              {"momentum", momentum},
              {"clip_grad", clip_grad},
              {"bf16", bf16},
              {"seed", seed},
              {"tp", tp},
              {"zero", zero},
              {"bucket_mb", bucket_mb},
              {"checkpoint_dir", checkpoint_dir},
              {"checkpoint_every", checkpoint_every},
              {"keep_checkpoints", keep_checkpoints},
              {"resume", resume},
              {"log", log},
              {"eval_every", eval_every},
              {"progress", progress}};
}

void TrainConfig::validate() const {
  TESSERA_CHECK(model == "digits" || model == "lm", "config key model: unknown model '", model,
                "' (expected digits or lm)");
  auto positive = [](int64_t v, const char* key) {
    TESSERA_CHECK(v > 0, "config key ", key, " must be positive, got ", v);
  };
  positive(steps, "steps");
  positive(global_batch, "global_batch");
  TESSERA_CHECK(micro_batch >= 0, "config key micro_batch must be >= 0, got ", micro_batch);
  positive(tp, "tp");
  positive(dim, "dim");
  positive(depth, "depth");
  positive(heads, "heads");
  positive(mlp_ratio, "mlp_ratio");
  positive(cluster_size, "cluster_size");
  positive(nearest, "nearest");
  positive(seq_len, "seq_len");
  TESSERA_CHECK(lm_window >= 0, "config key lm_window must be >= 0, got ", lm_window);
  positive(keep_checkpoints, "keep_checkpoints");
  TESSERA_CHECK(std::isfinite(lr) && lr > 0, "config key lr must be a positive number, got ", lr);
  TESSERA_CHECK(min_lr >= 0 && min_lr <= lr, "config key min_lr must be in [0, lr], got ", min_lr);
  TESSERA_CHECK(warmup_steps >= 0, "config key warmup_steps must be >= 0, got ", warmup_steps);
  TESSERA_CHECK(weight_decay >= 0, "config key weight_decay must be >= 0, got ", weight_decay);
  TESSERA_CHECK(beta1 >= 0 && beta1 < 1, "config key beta1 must be in [0, 1), got ", beta1);
  TESSERA_CHECK(beta2 >= 0 && beta2 < 1, "config key beta2 must be in [0, 1), got ", beta2);
  TESSERA_CHECK(eps > 0, "config key eps must be positive, got ", eps);
  TESSERA_CHECK(momentum >= 0 && momentum < 1, "config key momentum must be in [0, 1), got ",
                momentum);
  TESSERA_CHECK(clip_grad >= 0, "config key clip_grad must be >= 0, got ", clip_grad);
  TESSERA_CHECK(bucket_mb > 0 && bucket_mb <= 1 << 20,
                "config key bucket_mb must be in (0, 1048576] (MiB), got ", bucket_mb);
  TESSERA_CHECK(checkpoint_every >= 0, "config key checkpoint_every must be >= 0, got ",
                checkpoint_every);
  TESSERA_CHECK(eval_every >= 0, "config key eval_every must be >= 0, got ", eval_every);
  TESSERA_CHECK(progress == "auto" || progress == "on" || progress == "off",
                "config key progress must be auto, on or off, got '", progress, "'");
  TESSERA_CHECK(!resume || !checkpoint_dir.empty(),
                "config key resume needs checkpoint_dir (where to resume from)");
  TESSERA_CHECK(dim % heads == 0, "config key dim=", dim, " is not divisible by heads=", heads);
}

int64_t TrainConfig::micro_batch_for(int world_size) const {
  TESSERA_CHECK(world_size % tp == 0, "config key tp=", tp, " does not divide the ", world_size,
                " ranks");
  const int64_t dp = world_size / tp;
  if (micro_batch > 0) return micro_batch;
  TESSERA_CHECK(global_batch % dp == 0, "config key global_batch=", global_batch,
                " is not divisible by the ", dp, " data-parallel ranks");
  return global_batch / dp;
}

int64_t TrainConfig::accumulation_steps(int world_size) const {
  const int64_t mb = micro_batch_for(world_size);
  const int64_t dp = world_size / tp;
  int64_t per_step = 0;  // dp x mb, which a huge micro_batch overflows
  const bool overflow = __builtin_mul_overflow(dp, mb, &per_step);
  TESSERA_CHECK(!overflow && global_batch % per_step == 0, "config key global_batch=", global_batch,
                " is not divisible by data-parallel ranks x micro_batch = ", dp, " x ", mb,
                overflow ? std::string(" (over 2^63)") : " = " + std::to_string(per_step));
  return global_batch / per_step;
}

std::string find_sklearn_digits(const std::string& debian_path, const char* path_env) {
  namespace fs = std::filesystem;
  const std::string rel = "sklearn/datasets/data/digits.csv.gz";
  std::error_code ec;
  if (fs::exists(debian_path, ec)) return debian_path;
  std::vector<fs::path> prefixes;
  if (path_env != nullptr) {
    std::stringstream ss(path_env);
    for (std::string dir; std::getline(ss, dir, ':');) {
      if (!dir.empty()) prefixes.push_back(fs::path(dir).parent_path());
    }
  }
  prefixes.emplace_back("/usr/local");
  prefixes.emplace_back("/usr");
  for (const auto& prefix : prefixes) {
    const fs::path lib = prefix / "lib";
    if (!fs::is_directory(lib, ec)) continue;
    for (const auto& e : fs::directory_iterator(lib, ec)) {
      const std::string name = e.path().filename().string();
      if (name.rfind("python3", 0) != 0) continue;
      for (const char* sub : {"site-packages", "dist-packages"}) {
        const fs::path f = e.path() / sub / rel;
        if (fs::exists(f, ec)) return f.string();
      }
    }
  }
  return debian_path;
}

std::string default_data_path(const std::string& model) {
  if (model == "digits") {
    return find_sklearn_digits("/usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz",
                               std::getenv("PATH"));
  }
  // The KJV as plain text: `bible -l0 "Genesis1:1-Revelation22:21" > kjv.txt` (Debian's
  // bible-kjv); scripts/train_tiny.sh makes it.
  return "kjv.txt";
}

double learning_rate(const TrainConfig& c, int64_t step) {
  if (step < c.warmup_steps) {
    // The fraction first: lr * (step + 1) may overflow to inf for a huge lr.
    return c.lr * (static_cast<double>(step + 1) / static_cast<double>(c.warmup_steps));
  }
  const int64_t decay = c.steps - c.warmup_steps;
  if (decay <= 1) return c.lr;
  const double t = static_cast<double>(step - c.warmup_steps) / static_cast<double>(decay - 1);
  return c.min_lr + 0.5 * (c.lr - c.min_lr) * (1.0 + std::cos(std::numbers::pi * std::min(t, 1.0)));
}

}  // namespace tessera::training
