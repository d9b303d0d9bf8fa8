#include "caches/paged_kv_storage.h"

#include <map>
#include <set>

#include "common/error.h"

namespace tessera::caches {

torch::ScalarType torch_dtype(DType dtype) {
  switch (dtype) {
    case DType::kF64:
      return torch::kDouble;
    case DType::kF32:
      return torch::kFloat;
    case DType::kF16:
      return torch::kHalf;
    case DType::kBF16:
      return torch::kBFloat16;
    case DType::kF8E4M3:
    case DType::kU8:
      return torch::kByte;  // fp8 e4m3 bits: torch 1.13 has no float8 type
    case DType::kI64:
      return torch::kLong;
    case DType::kI32:
      return torch::kInt;
    case DType::kI16:
      return torch::kShort;
    case DType::kI8:
      return torch::kChar;
    case DType::kBool:
      return torch::kBool;
  }
  TESSERA_FAIL("dtype ", static_cast<int>(dtype), " has no torch type");
}

namespace {

torch::ScalarType storage_type(const AttentionSpec& spec) {
  switch (spec.quant()) {
    case KVQuant::kInt8:
      return torch::kChar;
    case KVQuant::kFp8E4M3:
      return torch::kByte;
    case KVQuant::kNone:
      break;
  }
  return torch_dtype(spec.dtype());
}

}  // namespace

PagedKVStorage::PagedKVStorage(const MemoryPlan& plan, torch::Device device)
    : plan_(plan), device_(device) {
  const auto n = static_cast<int64_t>(plan_.layer_specs.size());
  TESSERA_CHECK(static_cast<int64_t>(plan_.layer_slot.size()) == n, "plan.layer_slot has ",
                plan_.layer_slot.size(), " entries for ", n, " layers");
  slots_.resize(plan_.num_slots);
  states_.resize(n);
  for (int64_t l = 0; l < n; ++l) {
    const auto& spec = *plan_.layer_specs[l];
    const int64_t slot = plan_.layer_slot[l];
    if (slot >= 0 && !slots_[slot].k.defined()) {
      const auto& a = static_cast<const AttentionSpec&>(spec);
      auto opts = torch::TensorOptions().device(device_).dtype(storage_type(a));
      const int64_t nb = plan_.num_blocks, bs = a.block_size(), h = a.num_kv_heads();
      PagedLayerKV& kv = slots_[slot];
      kv.k = torch::zeros({nb, bs, h, a.key_head_size()}, opts);
      kv.v = torch::zeros({nb, bs, h, a.value_head_size()}, opts);
      if (a.quant() != KVQuant::kNone) {
        // Scale 1 keeps never-written slots (null block, padding) dequantising to zeros.
        kv.k_scale = torch::ones({nb, bs, h}, opts.dtype(torch::kFloat));
        kv.v_scale = torch::ones({nb, bs, h}, opts.dtype(torch::kFloat));
      }
    }
    if (spec.is_state()) {
      for (const auto& st : static_cast<const StateSpec&>(spec).states()) {
        std::vector<int64_t> shape{plan_.num_state_slots};
        shape.insert(shape.end(), st.shape.begin(), st.shape.end());
        states_[l].push_back(torch::zeros(
            shape, torch::TensorOptions().device(device_).dtype(torch_dtype(st.dtype))));
      }
    }
  }
}

bool PagedKVStorage::has_kv(int64_t layer) const {
  return layer >= 0 && layer < static_cast<int64_t>(plan_.layer_slot.size()) &&
         plan_.layer_slot[layer] >= 0;
}

const PagedLayerKV& PagedKVStorage::kv(int64_t layer) const {
  TESSERA_CHECK(has_kv(layer), "layer=", layer, " has no paged KV storage");
  return slots_[plan_.layer_slot[layer]];
}

const std::vector<torch::Tensor>& PagedKVStorage::state(int64_t layer) const {
  TESSERA_CHECK(
      layer >= 0 && layer < static_cast<int64_t>(states_.size()) && !states_[layer].empty(),
      "layer=", layer, " has no state storage");
  return states_[layer];
}

int64_t PagedKVStorage::bytes() const {
  int64_t total = 0;
  for (const auto& kv : slots_) {
    for (const auto* t : {&kv.k, &kv.v, &kv.k_scale, &kv.v_scale}) {
      if (t->defined()) total += t->numel() * t->element_size();
    }
  }
  for (const auto& layer : states_) {
    for (const auto& t : layer) total += t.numel() * t.element_size();
  }
  return total;
}

void PagedKVStorage::copy_blocks(std::span<const BlockCopy> copies) {
  // Group the copies per cache group: one index_copy_ per tensor.
  std::map<int32_t, std::pair<std::vector<int64_t>, std::vector<int64_t>>> per_group;
  for (const auto& c : copies) {
    TESSERA_CHECK(c.group >= 0 && c.group < static_cast<int32_t>(plan_.groups.size()),
                  "copy group=", c.group, " outside [0, ", plan_.groups.size(), ")");
    per_group[c.group].first.push_back(c.src);
    per_group[c.group].second.push_back(c.dst);
  }
  auto copy_rows = [&](torch::Tensor& t, const torch::Tensor& src, const torch::Tensor& dst) {
    t.index_copy_(0, dst, t.index_select(0, src));
  };
  for (auto& [g, idx] : per_group) {
    auto src = torch::tensor(idx.first, torch::kLong).to(device_);
    auto dst = torch::tensor(idx.second, torch::kLong).to(device_);
    std::set<int64_t> done;  // layers of one group may share a slot with nobody else's copy
    for (int64_t l : plan_.groups[g].layers) {
      if (has_kv(l)) {
        if (!done.insert(plan_.layer_slot[l]).second) continue;
        PagedLayerKV& kv = slots_[plan_.layer_slot[l]];
        for (auto* t : {&kv.k, &kv.v, &kv.k_scale, &kv.v_scale}) {
          if (t->defined()) copy_rows(*t, src, dst);
        }
      } else {
        for (auto& t : states_[l]) copy_rows(t, src, dst);
      }
    }
  }
}

torch::Tensor PagedKVStorage::slot_mapping(std::span<const int32_t> table, int64_t block_size,
                                           int64_t first, int64_t n) {
  TESSERA_CHECK(
      first >= 0 && n >= 0 && first + n <= static_cast<int64_t>(table.size()) * block_size,
      "positions [", first, ", ", first + n, ") exceed the ", table.size(), " blocks of the table");
  auto out = torch::empty({n}, torch::kLong);
  auto* o = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = first + i;
    o[i] = static_cast<int64_t>(table[p / block_size]) * block_size + p % block_size;
  }
  return out;
}

void PagedKVStorage::write(int64_t layer, const torch::Tensor& k, const torch::Tensor& v,
                           const torch::Tensor& slots) {
  TESSERA_CHECK(has_kv(layer), "layer=", layer, " has no paged KV storage");
  PagedLayerKV& kv = slots_[plan_.layer_slot[layer]];
  TESSERA_CHECK(!kv.k_scale.defined(), "layer=", layer,
                " stores quantised KV: write it with the kernels/quant quantising writer");
  TESSERA_CHECK(k.dim() == 3 && k.size(1) == kv.k.size(2) && k.size(2) == kv.k.size(3), "k shape ",
                k.sizes(), " must be [n, ", kv.k.size(2), ", ", kv.k.size(3), "]");
  TESSERA_CHECK(v.dim() == 3 && v.size(0) == k.size(0) && v.size(1) == kv.v.size(2) &&
                    v.size(2) == kv.v.size(3),
                "v shape ", v.sizes(), " must be [", k.size(0), ", ", kv.v.size(2), ", ",
                kv.v.size(3), "]");
  TESSERA_CHECK(
      slots.dim() == 1 && slots.size(0) == k.size(0) && slots.scalar_type() == torch::kLong,
      "slot_mapping must be int64 [", k.size(0), "], got ", slots.scalar_type(), " ",
      slots.sizes());
  auto idx = slots.to(device_);
  kv.k.view({-1, kv.k.size(2), kv.k.size(3)}).index_copy_(0, idx, k.to(kv.k.options()));
  kv.v.view({-1, kv.v.size(2), kv.v.size(3)}).index_copy_(0, idx, v.to(kv.v.options()));
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> PagedKVStorage::gather(
    int64_t layer, std::span<const int32_t> table, int64_t num_tokens) const {
  const PagedLayerKV& kv = this->kv(layer);
  const int64_t bs = kv.k.size(1);
  auto slots = slot_mapping(table, bs, 0, num_tokens);
  auto pos = torch::empty({num_tokens}, torch::kLong);
  auto* pp = pos.data_ptr<int64_t>();
  for (int64_t p = 0; p < num_tokens; ++p) {
    pp[p] = table[p / bs] == BlockPool::kNullBlock ? -1 : p;
  }
  auto idx = slots.to(device_);
  auto k = kv.k.view({-1, kv.k.size(2), kv.k.size(3)}).index_select(0, idx);
  auto v = kv.v.view({-1, kv.v.size(2), kv.v.size(3)}).index_select(0, idx);
  return {k, v, pos.to(device_)};
}

}  // namespace tessera::caches
