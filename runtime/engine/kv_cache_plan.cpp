#include "runtime/engine/kv_cache_plan.h"

#include <algorithm>
#include <sstream>

#include "common/error.h"
#include "runtime/models/layers/sequence_sharded_kv.h"

namespace tessera::engine {

namespace {

caches::SpecPtr make_spec(int64_t window, const caches::AttentionShape& shape) {
  if (window > 0) return std::make_shared<caches::SlidingWindowSpec>(shape, window);
  return std::make_shared<caches::FullAttentionSpec>(shape);
}

caches::AttentionShape shape_of(const models::ModelConfig& c, const models::ShardLayout& layout,
                                int64_t block_size, DType dtype) {
  caches::AttentionShape s;
  s.block_size = block_size;
  s.num_kv_heads = layout.kv_heads.size;
  s.key_head_size = c.head_dim;
  s.value_head_size = c.head_dim;
  s.dtype = dtype;
  return s;
}

}  // namespace

std::vector<caches::SpecPtr> layer_specs(const models::ModelConfig& config,
                                         const models::ShardLayout& layout, int64_t block_size,
                                         DType dtype) {
  TESSERA_CHECK(dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16,
                "kv cache dtype must be float32, bfloat16 or float16, got ", dtype_name(dtype));
  const auto shape = shape_of(config, layout, block_size, dtype);
  std::vector<caches::SpecPtr> specs;
  for (int64_t w : config.layer_windows) specs.push_back(make_spec(w, shape));
  return specs;
}

KVCachePlan plan_kv_cache(const models::ModelConfig& config, const models::ShardLayout& layout,
                          const KVCacheOptions& options, int device, sharding::Communicator* tp) {
  TESSERA_CHECK(options.block_size > 0, "block_size must be positive, got ", options.block_size);
  // Checked on a CPU too: a value only a GPU run would use is still a wrong value.
  TESSERA_CHECK(options.device_memory_fraction > 0 && options.device_memory_fraction <= 1,
                "the KV cache's device memory fraction (--kv-cache-fraction) must be in (0, 1], "
                "got ",
                options.device_memory_fraction);
  options.limits.validate();
  const auto specs = layer_specs(config, layout, options.block_size, options.dtype);
  int64_t budget = options.budget_bytes;
  if (budget <= 0) {
    if (device >= 0) {
      budget = caches::device_budget_bytes(device, options.device_memory_fraction);
    } else {
      // What every sequence at max_model_len would hold (plan once with a probe budget large
      // enough for one block to learn the bytes per block), capped.
      auto probe = caches::plan_memory(specs, options.limits, int64_t{1} << 62);
      const int64_t need =
          (probe.pages_per_request * options.limits.batch_size + 1) * probe.bytes_per_block;
      budget = std::min(need, kDefaultCpuBudget);
    }
  }
  KVCachePlan out;
  out.dcp = layout.dcp_size;
  out.storage = caches::plan_memory(specs, options.limits, budget);
  const int64_t agreed = models::min_blocks_over_ranks(tp, out.storage.num_blocks);
  out.storage.num_blocks = static_cast<int32_t>(agreed);
  out.groups = out.storage.groups;
  if (out.dcp > 1) {
    // The manager's blocks span the dcp ranks: block_size tokens on each.
    const auto vshape = shape_of(config, layout, options.block_size * out.dcp, options.dtype);
    for (auto& g : out.groups) {
      int64_t window = 0;
      if (g.spec->kind() == caches::SpecKind::kSlidingWindow) {
        window = static_cast<const caches::SlidingWindowSpec&>(*g.spec).window();
      }
      g.spec = make_spec(window, vshape);
    }
  }
  std::ostringstream os;
  os << out.storage.table();
  if (tp != nullptr && tp->size() > 1) {
    os << "pool: the smallest over " << tp->size() << " tensor-parallel ranks; each holds "
       << layout.kv_heads.size << " of " << config.num_key_value_heads << " KV heads\n";
  }
  if (out.dcp > 1) {
    os << "decode context parallel: each KV head's tokens are split over " << out.dcp
       << " ranks (token p on rank p % " << out.dcp << "); a block holds "
       << options.block_size * out.dcp << " tokens, " << options.block_size << " per rank\n";
  }
  out.table = os.str();
  return out;
}

}  // namespace tessera::engine
