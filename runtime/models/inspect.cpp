#include "runtime/models/inspect.h"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <regex>
#include <sstream>

#include "common/error.h"
#include "runtime/models/model_config.h"
#include "runtime/models/model_folder.h"
#include "runtime/models/safetensors.h"

namespace tessera::models {

namespace {

std::string bytes_text(int64_t b) {
  char buf[32];
  const double v = static_cast<double>(b);
  if (b < 1024) {
    std::snprintf(buf, sizeof(buf), "%lld B", static_cast<long long>(b));
  } else if (b < (int64_t{1} << 20)) {
    std::snprintf(buf, sizeof(buf), "%.1f KiB", v / 1024);
  } else if (b < (int64_t{1} << 30)) {
    std::snprintf(buf, sizeof(buf), "%.1f MiB", v / (1 << 20));
  } else {
    std::snprintf(buf, sizeof(buf), "%.2f GiB", v / (1 << 30));
  }
  return buf;
}

// The group a tensor's bytes are reported under: its decoder layer, or its own short name.
std::pair<int64_t, std::string> group_of(const std::string& name) {
  static const std::regex layer(R"((?:^|\.)layers\.(\d+)\.)");
  std::smatch m;
  if (std::regex_search(name, m, layer)) {
    // Past int64 (std::stoll threw std::out_of_range) is past every model's layer count.
    const std::string digits = m[1].str();
    int64_t li = 0;
    const auto r = std::from_chars(digits.data(), digits.data() + digits.size(), li);
    TESSERA_CHECK(r.ec == std::errc(), "tensor '", name, "' names layer ", digits,
                  ", past any model's layer count");
    return {li, ""};
  }
  if (name.find("embed_tokens") != std::string::npos) return {-1, "embed_tokens"};
  if (name.rfind("lm_head", 0) == 0) return {-1, "lm_head"};
  if (name.find("norm") != std::string::npos) return {-1, "norm"};
  return {-1, "other"};
}

}  // namespace

bool is_tensor_parallel(const std::string& name) {
  for (const char* p :
       {"q_proj.", "k_proj.", "v_proj.", "o_proj.", "gate_proj.", "up_proj.", "down_proj."}) {
    if (name.find(p) != std::string::npos) return true;
  }
  return false;
}

InspectReport inspect_model(const std::string& model, const InspectOptions& o) {
  TESSERA_CHECK(o.tp >= 1, "--tp must be positive, got ", o.tp);
  TESSERA_CHECK(o.batch >= 1, "--batch must be positive, got ", o.batch);
  TESSERA_CHECK(o.block_size >= 1, "--block-size must be positive, got ", o.block_size);
  TESSERA_CHECK(o.max_model_len >= 0, "--max-model-len must be positive, got ", o.max_model_len);
  TESSERA_CHECK(o.max_num_batched_tokens >= 0, "--max-num-batched-tokens must be positive, got ",
                o.max_num_batched_tokens);
  TESSERA_CHECK(!o.dtype || is_floating(*o.dtype), "--dtype must be a floating type, got ",
                o.dtype ? dtype_name(*o.dtype) : "");
  const ModelFolder folder = ModelFolder::resolve(model);
  const ModelConfig cfg = ModelConfig::from_file(folder.config_json());
  cfg.check_tensor_parallel(o.tp);

  InspectReport rep;
  rep.model_dir = folder.dir();
  rep.model_type = cfg.model_type;
  rep.num_layers = cfg.num_hidden_layers;
  rep.options = o;
  rep.options.max_model_len = o.max_model_len > 0 ? o.max_model_len : cfg.max_position_embeddings;
  rep.options.max_num_batched_tokens = o.max_num_batched_tokens > 0
                                           ? o.max_num_batched_tokens
                                           : std::min<int64_t>(rep.options.max_model_len, 2048);

  std::map<std::string, InspectLayer> named;
  std::vector<InspectLayer> layers(static_cast<size_t>(cfg.num_hidden_layers));
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) layers[i].name = "layer " + std::to_string(i);
  std::map<std::string, int64_t> float_bytes;  // stored float dtypes, for the default KV dtype
  for (const auto& path : folder.weight_files()) {
    const auto f = SafetensorsFile::open(path);
    for (const auto& n : f->names()) {
      const TensorEntry& e = f->get(n);
      auto [li, gname] = group_of(n);
      TESSERA_CHECK(li < cfg.num_hidden_layers, "'", path, "': tensor '", n, "' names layer ", li,
                    " but num_hidden_layers=", cfg.num_hidden_layers);
      InspectLayer& g = li >= 0 ? layers[li] : named[gname];
      if (li < 0) g.name = gname;
      const std::string dt(dtype_name(e.dtype));
      g.by_dtype[dt].params += e.numel();
      g.by_dtype[dt].bytes += static_cast<int64_t>(e.nbytes);
      rep.total_by_dtype[dt].params += e.numel();
      rep.total_by_dtype[dt].bytes += static_cast<int64_t>(e.nbytes);
      g.params += e.numel();
      rep.params += e.numel();
      if (is_floating(e.dtype)) float_bytes[dt] += static_cast<int64_t>(e.nbytes);
      const bool split = is_tensor_parallel(n);
      TESSERA_CHECK(!split || e.numel() % o.tp == 0, "tensor '", n, "' has ", e.numel(),
                    " elements, not divisible by --tp ", o.tp);
      const int64_t local = split ? e.numel() / o.tp : e.numel();
      g.params_per_rank += local;
      const DType out = o.dtype && is_floating(e.dtype) ? *o.dtype : e.dtype;
      g.weight_bytes_per_rank += local * static_cast<int64_t>(dtype_size(out));
    }
  }
  // The KV dtype: --dtype, else the dtype holding most of the stored floating-point bytes.
  DType kv_dtype = DType::kF32;
  if (o.dtype) {
    kv_dtype = *o.dtype;
  } else {
    int64_t best = -1;
    for (const auto& [dt, b] : float_bytes) {
      if (b > best) {
        best = b;
        kv_dtype = parse_dtype(dt);
      }
    }
  }
  rep.weight_dtype = o.dtype ? std::string(dtype_name(*o.dtype)) : "as stored";
  rep.kv_dtype = o.kv_quant == caches::KVQuant::kNone
                     ? std::string(dtype_name(kv_dtype))
                     : std::string(caches::kv_quant_name(o.kv_quant));

  caches::CacheLimits limits;
  limits.max_model_len = rep.options.max_model_len;
  limits.max_num_batched_tokens = rep.options.max_num_batched_tokens;
  limits.batch_size = o.batch;
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    auto shape_for = [&](int64_t heads) {
      caches::AttentionShape s;
      s.block_size = o.block_size;
      s.num_kv_heads = heads;
      s.key_head_size = cfg.head_dim;
      s.dtype = kv_dtype;
      s.quant = o.kv_quant;
      return s;
    };
    auto spec = [&](int64_t heads) -> caches::SpecPtr {
      const int64_t w = cfg.layer_windows[i];
      if (w > 0) return std::make_shared<caches::SlidingWindowSpec>(shape_for(heads), w);
      return std::make_shared<caches::FullAttentionSpec>(shape_for(heads));
    };
    const auto whole = spec(cfg.num_key_value_heads);
    const auto local = spec(cfg.num_key_value_heads / o.tp);
    InspectLayer& L = layers[i];
    L.kv_spec = local->describe();
    L.kv_bytes_per_token = whole->page_size_bytes() / o.block_size;
    L.kv_bytes_per_token_rank = local->page_size_bytes() / o.block_size;
    L.kv_bytes_per_rank = local->max_memory_usage_bytes(limits) * o.batch;
    rep.kv_bytes_per_token += L.kv_bytes_per_token;
    rep.kv_bytes_per_token_rank += L.kv_bytes_per_token_rank;
    rep.kv_bytes_per_rank += L.kv_bytes_per_rank;
  }
  for (const char* n : {"embed_tokens"}) {
    if (named.count(n)) rep.layers.push_back(named[n]);
  }
  for (auto& L : layers) rep.layers.push_back(std::move(L));
  for (const char* n : {"norm", "lm_head", "other"}) {
    if (named.count(n)) rep.layers.push_back(named[n]);
  }
  for (const auto& L : rep.layers) rep.weight_bytes_per_rank += L.weight_bytes_per_rank;
  return rep;
}

nlohmann::json InspectReport::to_json() const {
  nlohmann::json j{{"model", model_dir},
                   {"model_type", model_type},
                   {"num_layers", num_layers},
                   {"params", params},
                   {"tp", options.tp},
                   {"weight_dtype", weight_dtype},
                   {"kv_dtype", kv_dtype},
                   {"max_model_len", options.max_model_len},
                   {"batch", options.batch},
                   {"max_num_batched_tokens", options.max_num_batched_tokens},
                   {"block_size", options.block_size}};
  j["stored"] = nlohmann::json::object();
  for (const auto& [dt, b] : total_by_dtype)
    j["stored"][dt] = {{"params", b.params}, {"bytes", b.bytes}};
  j["layers"] = nlohmann::json::array();
  for (const auto& L : layers) {
    nlohmann::json l{{"name", L.name},
                     {"params", L.params},
                     {"params_per_rank", L.params_per_rank},
                     {"weight_bytes_per_rank", L.weight_bytes_per_rank}};
    l["stored"] = nlohmann::json::object();
    for (const auto& [dt, b] : L.by_dtype)
      l["stored"][dt] = {{"params", b.params}, {"bytes", b.bytes}};
    if (!L.kv_spec.empty()) {
      l["kv_spec"] = L.kv_spec;
      l["kv_bytes_per_token"] = L.kv_bytes_per_token;
      l["kv_bytes_per_token_per_rank"] = L.kv_bytes_per_token_rank;
      l["kv_bytes_per_rank"] = L.kv_bytes_per_rank;
    }
    j["layers"].push_back(l);
  }
  j["per_rank"] = {{"weight_bytes", weight_bytes_per_rank},
                   {"kv_bytes_per_token", kv_bytes_per_token_rank},
                   {"kv_bytes", kv_bytes_per_rank},
                   {"total_bytes", total_bytes_per_rank()}};
  j["kv_bytes_per_token"] = kv_bytes_per_token;
  return j;
}

std::string InspectReport::table() const {
  std::ostringstream os;
  char line[256];
  os << model_dir << ": " << model_type << ", " << num_layers << " layers, " << params
     << " parameters (stored:";
  for (const auto& [dt, b] : total_by_dtype) os << " " << dt << " " << bytes_text(b.bytes);
  os << ")\n";
  std::snprintf(line, sizeof(line), "%-14s %12s  %-26s %12s %12s  %s\n", "layer", "params",
                "stored bytes", "KV B/token", "rank KV B/t", "KV spec (one rank)");
  os << line;
  for (const auto& L : layers) {
    std::string stored;
    for (const auto& [dt, b] : L.by_dtype) {
      stored += (stored.empty() ? "" : ", ") + dt + " " + bytes_text(b.bytes);
    }
    const bool kv = !L.kv_spec.empty();
    std::snprintf(line, sizeof(line), "%-14s %12lld  %-26s %12s %12s  %s\n", L.name.c_str(),
                  static_cast<long long>(L.params), stored.c_str(),
                  kv ? std::to_string(L.kv_bytes_per_token).c_str() : "-",
                  kv ? std::to_string(L.kv_bytes_per_token_rank).c_str() : "-",
                  kv ? L.kv_spec.c_str() : "");
    os << line;
  }
  os << "per rank: tp=" << options.tp << ", weights " << weight_dtype << ", KV " << kv_dtype
     << ", max_model_len=" << options.max_model_len << ", batch=" << options.batch << "\n";
  os << "  weights  " << bytes_text(weight_bytes_per_rank) << "\n";
  os << "  KV cache " << bytes_text(kv_bytes_per_rank) << " (" << kv_bytes_per_token_rank
     << " B/token, all layers)\n";
  os << "  total    " << bytes_text(total_bytes_per_rank()) << "\n";
  return os.str();
}

}  // namespace tessera::models
