#include "caches/contiguous_kv_cache.h"

#include <algorithm>

#include "common/error.h"

namespace tessera::caches {

void ContiguousKVCacheConfig::validate() const {
  TESSERA_CHECK(num_layers > 0, "num_layers must be positive, got ", num_layers);
  TESSERA_CHECK(batch_size > 0, "batch_size must be positive, got ", batch_size);
  TESSERA_CHECK(max_len > 0, "max_len must be positive, got ", max_len);
  TESSERA_CHECK(num_kv_heads > 0, "num_kv_heads must be positive, got ", num_kv_heads);
  TESSERA_CHECK(head_dim > 0, "head_dim must be positive, got ", head_dim);
  TESSERA_CHECK(max_chunk_tokens > 0, "max_chunk_tokens must be positive, got ", max_chunk_tokens);
  TESSERA_CHECK(encoder_len >= 0, "encoder_len must be >= 0, got ", encoder_len);
  TESSERA_CHECK(static_cast<int64_t>(windows.size()) == num_layers, "windows has ", windows.size(),
                " entries but num_layers=", num_layers);
  for (size_t i = 0; i < windows.size(); ++i) {
    TESSERA_CHECK(windows[i] >= 0, "windows[", i, "] must be >= 0 (0 = full attention), got ",
                  windows[i]);
  }
}

int64_t ContiguousKVCacheConfig::capacity(int64_t layer) const {
  const int64_t w = windows.at(layer);
  return w == 0 ? max_len : std::min(max_len, w - 1 + max_chunk_tokens);
}

int64_t ContiguousKVCacheConfig::bytes() const {
  const int64_t elem = c10::elementSize(dtype);
  int64_t total = 0;
  for (int64_t l = 0; l < num_layers; ++l) {
    const int64_t slots = batch_size * capacity(l);
    total += 2 * slots * num_kv_heads * head_dim * elem + slots * 8;
    const int64_t cross = batch_size * encoder_len;
    total += 2 * cross * num_kv_heads * head_dim * elem + cross * 8;
  }
  return total;
}

int64_t ContiguousKVCacheConfig::kv_bytes() const {
  const int64_t elem = c10::elementSize(dtype);
  int64_t total = 0;
  for (int64_t l = 0; l < num_layers; ++l) {
    total += 2 * batch_size * capacity(l) * num_kv_heads * head_dim * elem;
  }
  return total;
}

ContiguousKVCache::ContiguousKVCache(ContiguousKVCacheConfig config) : config_(std::move(config)) {
  config_.validate();
  auto opts = torch::TensorOptions().dtype(config_.dtype).device(config_.device);
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    const int64_t cap = config_.capacity(l);
    layers_.push_back(
        {torch::zeros({config_.batch_size, cap, config_.num_kv_heads, config_.head_dim}, opts),
         torch::zeros({config_.batch_size, cap, config_.num_kv_heads, config_.head_dim}, opts),
         torch::full({config_.batch_size, cap}, -1,
                     torch::TensorOptions().dtype(torch::kLong).device(config_.device))});
    if (config_.encoder_len > 0) {
      const int64_t s = config_.encoder_len;
      cross_.push_back(
          {torch::zeros({config_.batch_size, s, config_.num_kv_heads, config_.head_dim}, opts),
           torch::zeros({config_.batch_size, s, config_.num_kv_heads, config_.head_dim}, opts),
           torch::full({config_.batch_size, s}, -1,
                       torch::TensorOptions().dtype(torch::kLong).device(config_.device))});
    }
  }
}

void ContiguousKVCache::append(int64_t layer, const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& positions) {
  TESSERA_CHECK(layer >= 0 && layer < config_.num_layers, "layer=", layer, " is outside [0, ",
                config_.num_layers, ")");
  auto& l = layers_[layer];
  TESSERA_CHECK(k.dim() == 4 && k.size(0) == config_.batch_size &&
                    k.size(2) == config_.num_kv_heads && k.size(3) == config_.head_dim,
                "k shape ", k.sizes(), " must be [batch_size=", config_.batch_size,
                ", T, num_kv_heads=", config_.num_kv_heads, ", head_dim=", config_.head_dim, "]");
  TESSERA_CHECK(v.sizes() == k.sizes(), "v shape ", v.sizes(), " differs from k shape ", k.sizes());
  TESSERA_CHECK(positions.dim() == 2 && positions.size(0) == k.size(0) &&
                    positions.size(1) == k.size(1) && positions.scalar_type() == torch::kLong,
                "positions must be int64 [batch, T] = [", k.size(0), ", ", k.size(1), "], got ",
                positions.scalar_type(), " ", positions.sizes());
  const int64_t t = k.size(1);
  if (t == 0) return;
  TESSERA_CHECK(t <= config_.max_chunk_tokens, "append of ", t,
                " tokens exceeds max_chunk_tokens=", config_.max_chunk_tokens);
  // One fused reduction and one 2-element copy: a single device sync when the cache is on CUDA.
  const auto [lo, hi] = torch::aminmax(positions);
  const auto range = torch::stack({lo, hi}).to(torch::kCPU);
  const int64_t min_pos = range[0].item<int64_t>();
  const int64_t max_pos = range[1].item<int64_t>();
  TESSERA_CHECK(min_pos >= 0 && max_pos < config_.max_len,
                "positions must lie in [0, max_len=", config_.max_len, "), got [", min_pos, ", ",
                max_pos, "]");
  const int64_t cap = config_.capacity(layer);
  auto slots = positions.remainder(cap);  // [batch, T]
  // Scatter each (batch, token) into its slot: flatten batch x capacity.
  auto flat_index =
      (torch::arange(config_.batch_size, positions.options()).unsqueeze(1) * cap + slots).view(-1);
  const auto per_slot = config_.num_kv_heads * config_.head_dim;
  l.k.view({-1, per_slot}).index_copy_(0, flat_index, k.reshape({-1, per_slot}).to(l.k.dtype()));
  l.v.view({-1, per_slot}).index_copy_(0, flat_index, v.reshape({-1, per_slot}).to(l.v.dtype()));
  l.positions.view({-1}).index_copy_(0, flat_index, positions.reshape({-1}));
}

ContiguousKVCache::LayerView ContiguousKVCache::layer(int64_t layer) const {
  TESSERA_CHECK(layer >= 0 && layer < config_.num_layers, "layer=", layer, " is outside [0, ",
                config_.num_layers, ")");
  return layers_[layer];
}

std::vector<int64_t> ContiguousKVCache::occupied(int64_t layer) const {
  auto counts = this->layer(layer).positions.ge(0).sum(1).to(torch::kCPU).contiguous();
  const int64_t* c = counts.data_ptr<int64_t>();
  return std::vector<int64_t>(c, c + counts.numel());
}

torch::Tensor ContiguousKVCache::attention_mask(int64_t layer,
                                                const torch::Tensor& q_positions) const {
  const auto view = this->layer(layer);
  TESSERA_CHECK(q_positions.dim() == 2 && q_positions.size(0) == config_.batch_size &&
                    q_positions.scalar_type() == torch::kLong,
                "q_positions must be int64 [batch_size=", config_.batch_size, ", T], got ",
                q_positions.scalar_type(), " ", q_positions.sizes());
  auto q = q_positions.to(view.positions.device()).unsqueeze(2);  // [batch, T, 1]
  auto k = view.positions.unsqueeze(1);                           // [batch, 1, capacity]
  auto mask = k.ge(0).logical_and(k.le(q));
  const int64_t w = config_.windows[layer];
  if (w > 0) mask = mask.logical_and((q - k).lt(w));
  return mask;
}

void ContiguousKVCache::set_cross(int64_t layer, const torch::Tensor& k, const torch::Tensor& v) {
  TESSERA_CHECK(config_.encoder_len > 0, "set_cross needs encoder_len > 0, got ",
                config_.encoder_len);
  TESSERA_CHECK(layer >= 0 && layer < config_.num_layers, "layer=", layer, " is outside [0, ",
                config_.num_layers, ")");
  TESSERA_CHECK(k.dim() == 4 && k.size(0) == config_.batch_size &&
                    k.size(1) <= config_.encoder_len && k.size(2) == config_.num_kv_heads &&
                    k.size(3) == config_.head_dim,
                "k shape ", k.sizes(), " must be [batch_size=", config_.batch_size,
                ", S <= encoder_len=", config_.encoder_len, ", num_kv_heads=", config_.num_kv_heads,
                ", head_dim=", config_.head_dim, "]");
  TESSERA_CHECK(v.sizes() == k.sizes(), "v shape ", v.sizes(), " differs from k shape ", k.sizes());
  auto& c = cross_[layer];
  const int64_t s = k.size(1);
  c.k.narrow(1, 0, s).copy_(k);
  c.v.narrow(1, 0, s).copy_(v);
  c.positions.fill_(-1);
  c.positions.narrow(1, 0, s).copy_(torch::arange(s, c.positions.options()).expand({k.size(0), s}));
}

ContiguousKVCache::LayerView ContiguousKVCache::cross(int64_t layer) const {
  TESSERA_CHECK(config_.encoder_len > 0, "cross needs encoder_len > 0, got ", config_.encoder_len);
  TESSERA_CHECK(layer >= 0 && layer < config_.num_layers, "layer=", layer, " is outside [0, ",
                config_.num_layers, ")");
  return cross_[layer];
}

void ContiguousKVCache::reset() {
  for (auto& l : layers_) l.positions.fill_(-1);
  for (auto& l : cross_) l.positions.fill_(-1);
}

}  // namespace tessera::caches
