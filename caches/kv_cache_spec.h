// KV cache specifications: immutable values that say how one layer caches its past (full
// attention, sliding window, chunked local attention, Mamba / Mamba2 and gated-delta state,
// cross attention, or no cache at all) and how many bytes that costs. Memory planning, the cache
// managers and storage allocation all read their sizes from here. Torch-free.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/dtype.h"

namespace tessera::caches {

// How K/V elements are stored. Quantised modes store one byte per element plus one float32 scale
// per (token, kv_head) for K and one for V.
enum class KVQuant : uint8_t { kNone, kInt8, kFp8E4M3 };
std::string_view kv_quant_name(KVQuant quant);

enum class SpecKind : uint8_t {
  kFullAttention,
  kSlidingWindow,
  kChunkedLocal,
  kCrossAttention,
  kEncoderOnly,
  kMamba,
  kLinearAttention,
};
std::string_view spec_kind_name(SpecKind kind);

// The serving limits that bound one request's cache (vLLM: model_config + scheduler_config).
struct CacheLimits {
  int64_t max_model_len = 0;           // longest sequence (prompt + output)
  int64_t max_num_batched_tokens = 0;  // most tokens one step may compute (chunked prefill)
  int64_t batch_size = 0;              // most sequences running together
  int64_t max_encoder_len = 0;         // encoder tokens for cross attention; 0 without encoder

  // Throws naming the field and value: "batch_size must be positive, got 0".
  void validate() const;
};

int64_t cdiv(int64_t a, int64_t b);

class KVCacheSpec {
 public:
  virtual ~KVCacheSpec() = default;

  SpecKind kind() const { return kind_; }
  // Tokens per page. State specs hold one page (slot) per sequence and report 1.
  int64_t block_size() const { return block_size_; }
  // Bytes of one page (one block of one layer, or one sequence's state of one layer).
  virtual int64_t page_size_bytes() const = 0;
  // Bytes one request may need at most in one layer under `limits`.
  virtual int64_t max_memory_usage_bytes(const CacheLimits& limits) const = 0;
  // Pages one request may need at most in one layer (max_memory_usage_bytes / page_size_bytes).
  int64_t max_pages(const CacheLimits& limits) const;
  // True for specs whose pages come from the shared block pool (attention with a cache).
  bool uses_block_pool() const;
  bool is_state() const { return kind_ == SpecKind::kMamba || kind_ == SpecKind::kLinearAttention; }
  virtual std::string describe() const = 0;
  // Same kind and same fields: layers with equal specs form one cache group.
  virtual bool equals(const KVCacheSpec& other) const = 0;

 protected:
  KVCacheSpec(SpecKind kind, int64_t block_size) : kind_(kind), block_size_(block_size) {}

 private:
  SpecKind kind_;
  int64_t block_size_;
};

using SpecPtr = std::shared_ptr<const KVCacheSpec>;

// Attention layers: pages of [block_size, num_kv_heads, head_size] for K and for V.
class AttentionSpec : public KVCacheSpec {
 public:
  int64_t num_kv_heads() const { return num_kv_heads_; }
  int64_t key_head_size() const { return key_head_size_; }
  int64_t value_head_size() const { return value_head_size_; }
  DType dtype() const { return dtype_; }  // the model's K/V dtype (what quantised modes replace)
  KVQuant quant() const { return quant_; }
  // Bytes of one stored element: dtype_size(dtype) unquantised, 1 for int8 / fp8.
  int64_t element_bytes() const;
  // Bytes of K or V data of one page, and of the float32 scales of one page (0 unquantised).
  int64_t key_page_bytes() const;
  int64_t value_page_bytes() const;
  int64_t scale_page_bytes() const;
  int64_t page_size_bytes() const override;
  std::string describe() const override;
  bool equals(const KVCacheSpec& other) const override;
  // Same page layout (block size, heads, head sizes, dtype, quant): may share pool tensors.
  bool same_page_layout(const AttentionSpec& other) const;

 protected:
  AttentionSpec(SpecKind kind, int64_t block_size, int64_t num_kv_heads, int64_t key_head_size,
                int64_t value_head_size, DType dtype, KVQuant quant);
  virtual std::string extra_describe() const { return ""; }
  virtual int64_t extra_field() const { return 0; }

 private:
  int64_t num_kv_heads_;
  int64_t key_head_size_;
  int64_t value_head_size_;
  DType dtype_;
  KVQuant quant_;
};

struct AttentionShape {
  int64_t block_size = 16;
  int64_t num_kv_heads = 0;
  int64_t key_head_size = 0;
  int64_t value_head_size = 0;  // 0: same as key_head_size
  DType dtype = DType::kF16;
  KVQuant quant = KVQuant::kNone;
};

// Every past token of the sequence: cdiv(max_model_len, block_size) pages.
class FullAttentionSpec final : public AttentionSpec {
 public:
  explicit FullAttentionSpec(const AttentionShape& shape);
  int64_t max_memory_usage_bytes(const CacheLimits& limits) const override;
};

// The last `window` tokens. During chunked prefill a step keeps window-1 computed tokens plus the
// new ones, never more than max_model_len, and the window may start mid-page:
// (cdiv(min(window - 1 + max_num_batched_tokens, max_model_len), block_size) + 1) pages.
class SlidingWindowSpec final : public AttentionSpec {
 public:
  SlidingWindowSpec(const AttentionShape& shape, int64_t window);
  int64_t window() const { return window_; }
  int64_t max_memory_usage_bytes(const CacheLimits& limits) const override;

 private:
  std::string extra_describe() const override;
  int64_t extra_field() const override { return window_; }
  int64_t window_;
};

// Attention within aligned chunks of `chunk_size` tokens (Llama 4 local layers): at most the
// current chunk plus the new tokens, cdiv(min(chunk_size + max_num_batched_tokens,
// max_model_len), block_size) pages.
class ChunkedLocalAttentionSpec final : public AttentionSpec {
 public:
  ChunkedLocalAttentionSpec(const AttentionShape& shape, int64_t chunk_size);
  int64_t chunk_size() const { return chunk_size_; }
  int64_t max_memory_usage_bytes(const CacheLimits& limits) const override;

 private:
  std::string extra_describe() const override;
  int64_t extra_field() const override { return chunk_size_; }
  int64_t chunk_size_;
};

// Decoder cross attention over the encoder output: cdiv(max_encoder_len, block_size) pages,
// written once per request.
class CrossAttentionSpec final : public AttentionSpec {
 public:
  explicit CrossAttentionSpec(const AttentionShape& shape);
  int64_t max_memory_usage_bytes(const CacheLimits& limits) const override;
};

// Encoder-only (bidirectional) attention: K/V live for one forward pass, nothing is cached.
class EncoderOnlySpec final : public AttentionSpec {
 public:
  explicit EncoderOnlySpec(const AttentionShape& shape);
  int64_t max_memory_usage_bytes(const CacheLimits& limits) const override;  // 0
};

// Recurrent state layers keep fixed-size tensors per sequence, whatever its length: one slot.
class StateSpec : public KVCacheSpec {
 public:
  struct State {
    std::string name;            // "conv", "ssm", "recurrent"
    std::vector<int64_t> shape;  // per sequence
    DType dtype = DType::kF32;
  };
  const std::vector<State>& states() const { return states_; }
  int64_t page_size_bytes() const override;  // sum over states of prod(shape) * dtype size
  int64_t max_memory_usage_bytes(const CacheLimits& limits) const override;  // one page
  std::string describe() const override;
  bool equals(const KVCacheSpec& other) const override;

 protected:
  StateSpec(SpecKind kind, std::vector<State> states);

 private:
  std::vector<State> states_;
};

// Mamba (selective SSM) layers: a causal-conv state and an SSM state per sequence.
class MambaSpec final : public StateSpec {
 public:
  // Mamba1: conv [intermediate_size, conv_kernel - 1], ssm [intermediate_size, state_size].
  static std::shared_ptr<const MambaSpec> mamba1(int64_t intermediate_size, int64_t state_size,
                                                 int64_t conv_kernel, DType conv_dtype,
                                                 DType ssm_dtype);
  // Mamba2: conv [conv_kernel - 1, intermediate_size + 2 * n_groups * state_size],
  // ssm [num_heads, head_dim, state_size].
  static std::shared_ptr<const MambaSpec> mamba2(int64_t intermediate_size, int64_t n_groups,
                                                 int64_t num_heads, int64_t head_dim,
                                                 int64_t state_size, int64_t conv_kernel,
                                                 DType conv_dtype, DType ssm_dtype);
  int version() const { return version_; }

  MambaSpec(int version, std::vector<State> states);

 private:
  int version_;
};

// Linear attention with a gated-delta rule (Qwen3-Next, Kimi linear): conv state
// [conv_kernel - 1, 2 * num_k_heads * head_k_dim + num_v_heads * head_v_dim] and recurrent state
// [num_v_heads, head_k_dim, head_v_dim].
class LinearAttentionSpec final : public StateSpec {
 public:
  static std::shared_ptr<const LinearAttentionSpec> gated_delta(
      int64_t num_k_heads, int64_t num_v_heads, int64_t head_k_dim, int64_t head_v_dim,
      int64_t conv_kernel, DType conv_dtype, DType state_dtype);
  explicit LinearAttentionSpec(std::vector<State> states);
};

}  // namespace tessera::caches
