#include "runtime/training/sharded_params.h"

#include "common/error.h"
#include "sharding/tensor_parallel.h"

namespace tessera::training {

torch::Tensor deterministic_uniform(uint64_t seed, const std::string& name,
                                    const std::vector<int64_t>& shape, double bound) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a of the name
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  uint64_t state = h ^ (seed * 0x9e3779b97f4a7c15ull);
  int64_t n = 1;
  for (auto d : shape) n *= d;
  auto t = torch::empty({n}, torch::kFloat);
  float* p = t.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    const double u = static_cast<double>(z >> 11) * (1.0 / 9007199254740992.0);  // [0, 1)
    p[i] = static_cast<float>((2.0 * u - 1.0) * bound);
  }
  return t.view(shape);
}

torch::Tensor ShardedParams::slice(const torch::Tensor& full, int shard_dim,
                                   const std::string& name) const {
  if (shard_dim < 0 || tp_size() == 1) return full;
  const auto r = sharding::even_shard(full.size(shard_dim), tp_rank(), tp_size(),
                                      name + ".shape[" + std::to_string(shard_dim) + "]");
  return full.narrow(shard_dim, r.begin, r.size);
}

torch::Tensor ShardedParams::add(const std::string& name, const torch::Tensor& full, int shard_dim,
                                 bool decay) {
  ShardedParam p;
  p.name = name;
  p.full_shape = full.sizes().vec();
  p.shard_dim = shard_dim;
  p.decay = decay;
  p.local = slice(full.to(torch::kFloat), shard_dim, name).contiguous().clone();
  p.local.requires_grad_(true);
  params_.push_back(p);
  return params_.back().local;
}

std::vector<ParamInfo> ShardedParams::infos() const {
  std::vector<ParamInfo> out;
  for (const auto& p : params_) {
    out.push_back({p.name, p.local, p.shard_dim >= 0 && tp_size() > 1, p.decay});
  }
  return out;
}

std::vector<std::pair<std::string, torch::Tensor>> ShardedParams::gather_full() const {
  torch::NoGradGuard no_grad;
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : params_) {
    if (p.shard_dim < 0 || tp_size() == 1) {
      out.emplace_back(p.name, p.local.detach().clone());
      continue;
    }
    // [tp, *local] -> concatenated along shard_dim.
    auto g = tp_->all_gather(p.local.detach().contiguous());
    std::vector<torch::Tensor> pieces;
    for (int r = 0; r < tp_size(); ++r) pieces.push_back(g[r]);
    out.emplace_back(p.name, torch::cat(pieces, p.shard_dim));
  }
  return out;
}

void ShardedParams::load_full(const std::map<std::string, torch::Tensor>& full) {
  torch::NoGradGuard no_grad;
  for (auto& p : params_) {
    auto it = full.find(p.name);
    TESSERA_CHECK(it != full.end(), "checkpoint has no tensor '", p.name, "'");
    TESSERA_CHECK(it->second.sizes().vec() == p.full_shape, "checkpoint tensor '", p.name,
                  "' has shape ", it->second.sizes(), ", the model expects ",
                  torch::IntArrayRef(p.full_shape));
    p.local.copy_(slice(it->second.to(torch::kFloat), p.shard_dim, p.name));
  }
}

}  // namespace tessera::training
