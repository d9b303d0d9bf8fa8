#include "caches/memory_plan.h"

#include <algorithm>
#include <iomanip>
#include <sstream>

#include "common/error.h"

#ifdef TESSERA_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace tessera::caches {
namespace {

int64_t pages_for(const std::vector<CacheGroup>& groups, const CacheLimits& limits) {
  int64_t pages = 0;
  for (const auto& g : groups) {
    if (g.spec->uses_block_pool()) pages += g.spec->max_pages(limits);
  }
  return pages;
}

std::string fmt_bytes(int64_t b) {
  std::ostringstream os;
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  os << std::fixed << std::setprecision(u ? 2 : 0) << v << " " << units[u];
  return os.str();
}

}  // namespace

double MemoryPlan::max_concurrency() const {
  return pages_per_request ? static_cast<double>(num_blocks - 1) / pages_per_request : 0.0;
}

KVCacheManagerConfig MemoryPlan::manager_config(bool enable_prefix_caching) const {
  KVCacheManagerConfig c;
  c.groups = groups;
  c.num_blocks = num_blocks;
  c.num_state_slots = num_state_slots;
  c.enable_prefix_caching = enable_prefix_caching;
  return c;
}

MemoryPlan plan_memory(const std::vector<SpecPtr>& layer_specs, const CacheLimits& limits,
                       int64_t budget_bytes) {
  limits.validate();
  TESSERA_CHECK(!layer_specs.empty(), "layer_specs must not be empty");
  TESSERA_CHECK(budget_bytes > 0, "budget_bytes must be positive, got ", budget_bytes);
  for (size_t l = 0; l < layer_specs.size(); ++l) {
    TESSERA_CHECK(layer_specs[l] != nullptr, "layer_specs[", l, "] must not be null");
    TESSERA_CHECK(layer_specs[l]->kind() != SpecKind::kCrossAttention, "layer_specs[", l,
                  "] is cross attention, which the paged plan does not hold");
  }
  MemoryPlan p;
  p.layer_specs = layer_specs;
  p.groups = group_layers(layer_specs);
  p.limits = limits;
  p.budget_bytes = budget_bytes;
  p.layer_slot.assign(layer_specs.size(), -1);

  // Storage slots for attention layers.
  std::vector<const CacheGroup*> attn;
  for (const auto& g : p.groups) {
    if (g.spec->uses_block_pool()) attn.push_back(&g);
  }
  bool shared = true;
  for (const auto* g : attn) {
    shared = shared && static_cast<const AttentionSpec&>(*g->spec).same_page_layout(
                           static_cast<const AttentionSpec&>(*attn[0]->spec));
  }
  if (shared && !attn.empty()) {
    // A block id has a page in every slot, so a block of a group with fewer layers than slots
    // leaves pages unused: split groups into chunks of `size` layers (each chunk its own block
    // table), with `size` the smallest group unless the largest is within 25% of it.
    int64_t min_layers = INT64_MAX, max_layers = 0;
    for (const auto* g : attn) {
      min_layers = std::min<int64_t>(min_layers, g->layers.size());
      max_layers = std::max<int64_t>(max_layers, g->layers.size());
    }
    const int64_t size = max_layers * 4 < min_layers * 5 ? max_layers : min_layers;
    const int64_t page = attn.front()->spec->page_size_bytes();  // before p.groups is replaced
    std::vector<CacheGroup> split;
    for (const auto& g : p.groups) {
      if (!g.spec->uses_block_pool()) {
        split.push_back(g);
        continue;
      }
      for (size_t i = 0; i < g.layers.size(); i += size) {
        CacheGroup chunk{g.spec, {}};
        for (size_t j = i; j < std::min(g.layers.size(), i + size); ++j) {
          p.layer_slot[g.layers[j]] = static_cast<int64_t>(j - i);
          chunk.layers.push_back(g.layers[j]);
        }
        split.push_back(std::move(chunk));
      }
    }
    p.groups = std::move(split);
    p.num_slots = size;
    p.bytes_per_block = size * page;
  } else {
    for (const auto* g : attn) {
      for (int64_t l : g->layers) {
        p.layer_slot[l] = p.num_slots++;
        p.bytes_per_block += g->spec->page_size_bytes();
      }
    }
  }

  // State slots: one per running sequence plus the null slot.
  int64_t state_page = 0;
  for (const auto& g : p.groups) {
    if (g.spec->is_state()) state_page += g.spec->page_size_bytes() * g.layers.size();
  }
  if (state_page > 0) {
    p.num_state_slots = static_cast<int32_t>(limits.batch_size + 1);
    p.state_bytes = state_page * p.num_state_slots;
  }
  TESSERA_CHECK(p.state_bytes <= budget_bytes, "KV cache budget of ", budget_bytes,
                " bytes cannot hold the state of batch_size=", limits.batch_size, " sequences (",
                p.state_bytes, " bytes); lower batch_size or raise the budget");

  p.pages_per_request = pages_for(p.groups, limits);
  if (p.bytes_per_block == 0) return p;  // state-only (or encoder-only) model
  const int64_t blocks = (budget_bytes - p.state_bytes) / p.bytes_per_block;
  p.num_blocks = static_cast<int32_t>(std::min<int64_t>(blocks, INT32_MAX));
  const int64_t usable = std::max<int64_t>(0, p.num_blocks - 1);
  if (usable < p.pages_per_request) {
    // The largest max_model_len whose request still fits: pages grow with the length.
    int64_t lo = 0, hi = limits.max_model_len;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      CacheLimits l = limits;
      l.max_model_len = mid;
      l.max_num_batched_tokens = std::min(limits.max_num_batched_tokens, mid);
      if (pages_for(p.groups, l) <= usable) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    TESSERA_FAIL("KV cache budget of ", budget_bytes, " bytes",
                 p.state_bytes ? " (after " + std::to_string(p.state_bytes) + " bytes of state)"
                               : std::string(),
                 " holds ", usable, " blocks of ", p.bytes_per_block,
                 " bytes, but one request of max_model_len=", limits.max_model_len, " needs ",
                 p.pages_per_request, " blocks; the largest max_model_len that fits is ", lo);
  }
  return p;
}

std::string MemoryPlan::table() const {
  std::ostringstream os;
  os << "KV cache plan: budget " << fmt_bytes(budget_bytes) << ", max_model_len "
     << limits.max_model_len << ", max_num_batched_tokens " << limits.max_num_batched_tokens
     << ", batch_size " << limits.batch_size << "\n";
  os << std::left << std::setw(6) << "group" << std::setw(8) << "layers" << std::setw(90) << "spec"
     << std::right << std::setw(12) << "page bytes" << std::setw(14) << "pages/request"
     << "\n";
  for (size_t g = 0; g < groups.size(); ++g) {
    const auto& spec = *groups[g].spec;
    os << std::left << std::setw(6) << g << std::setw(8) << groups[g].layers.size() << std::setw(90)
       << spec.describe() << std::right << std::setw(12) << spec.page_size_bytes() << std::setw(14)
       << spec.max_pages(limits) << "\n";
  }
  os << "blocks " << num_blocks << " (1 null) x " << fmt_bytes(bytes_per_block) << " over "
     << num_slots << " storage slots = " << fmt_bytes(kv_bytes());
  if (num_state_slots) {
    os << "; state slots " << num_state_slots << " = " << fmt_bytes(state_bytes);
  }
  os << "; total " << fmt_bytes(total_bytes()) << "; " << std::fixed << std::setprecision(2)
     << max_concurrency() << " max-length requests fit\n";
  return os.str();
}

int64_t device_budget_bytes(int device, double fraction) {
  TESSERA_CHECK(fraction > 0 && fraction <= 1, "fraction must lie in (0, 1], got ", fraction);
#ifdef TESSERA_WITH_CUDA
  int prev = 0;
  TESSERA_CHECK(cudaGetDevice(&prev) == cudaSuccess, "cudaGetDevice failed");
  TESSERA_CHECK(cudaSetDevice(device) == cudaSuccess, "device=", device,
                " is not a usable CUDA device");
  size_t free_b = 0, total_b = 0;
  const cudaError_t err = cudaMemGetInfo(&free_b, &total_b);
  cudaSetDevice(prev);
  TESSERA_CHECK(err == cudaSuccess, "cudaMemGetInfo on device=", device,
                " failed: ", cudaGetErrorString(err));
  return static_cast<int64_t>(static_cast<double>(free_b) * fraction);
#else
  TESSERA_FAIL("device_budget_bytes(device=", device, "): Tessera was built without CUDA");
#endif
}

}  // namespace tessera::caches
