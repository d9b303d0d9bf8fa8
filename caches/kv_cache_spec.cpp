#include "caches/kv_cache_spec.h"

#include <algorithm>
#include <sstream>

#include "common/error.h"

namespace tessera::caches {

std::string_view kv_quant_name(KVQuant quant) {
  switch (quant) {
    case KVQuant::kNone:
      return "none";
    case KVQuant::kInt8:
      return "int8";
    case KVQuant::kFp8E4M3:
      return "fp8_e4m3";
  }
  return "?";
}

std::string_view spec_kind_name(SpecKind kind) {
  switch (kind) {
    case SpecKind::kFullAttention:
      return "full_attention";
    case SpecKind::kSlidingWindow:
      return "sliding_window";
    case SpecKind::kChunkedLocal:
      return "chunked_local";
    case SpecKind::kCrossAttention:
      return "cross_attention";
    case SpecKind::kEncoderOnly:
      return "encoder_only";
    case SpecKind::kMamba:
      return "mamba";
    case SpecKind::kLinearAttention:
      return "linear_attention";
  }
  return "?";
}

void CacheLimits::validate() const {
  TESSERA_CHECK(max_model_len > 0, "max_model_len must be positive, got ", max_model_len);
  TESSERA_CHECK(max_num_batched_tokens > 0, "max_num_batched_tokens must be positive, got ",
                max_num_batched_tokens);
  TESSERA_CHECK(batch_size > 0, "batch_size must be positive, got ", batch_size);
  TESSERA_CHECK(max_encoder_len >= 0, "max_encoder_len must be >= 0, got ", max_encoder_len);
}

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t KVCacheSpec::max_pages(const CacheLimits& limits) const {
  return max_memory_usage_bytes(limits) / page_size_bytes();
}

bool KVCacheSpec::uses_block_pool() const {
  return kind_ == SpecKind::kFullAttention || kind_ == SpecKind::kSlidingWindow ||
         kind_ == SpecKind::kChunkedLocal || kind_ == SpecKind::kCrossAttention;
}

// ---- attention ----

AttentionSpec::AttentionSpec(SpecKind kind, int64_t block_size, int64_t num_kv_heads,
                             int64_t key_head_size, int64_t value_head_size, DType dtype,
                             KVQuant quant)
    : KVCacheSpec(kind, block_size),
      num_kv_heads_(num_kv_heads),
      key_head_size_(key_head_size),
      value_head_size_(value_head_size == 0 ? key_head_size : value_head_size),
      dtype_(dtype),
      quant_(quant) {
  TESSERA_CHECK(block_size > 0, "block_size must be positive, got ", block_size);
  TESSERA_CHECK(num_kv_heads > 0, "num_kv_heads must be positive, got ", num_kv_heads);
  TESSERA_CHECK(key_head_size > 0, "key_head_size must be positive, got ", key_head_size);
  TESSERA_CHECK(value_head_size >= 0, "value_head_size must be >= 0 (0 = key_head_size), got ",
                value_head_size);
  TESSERA_CHECK(is_floating(dtype), "dtype must be a floating type, got ", dtype_name(dtype));
}

int64_t AttentionSpec::element_bytes() const {
  return quant_ == KVQuant::kNone ? static_cast<int64_t>(dtype_size(dtype_)) : 1;
}

int64_t AttentionSpec::key_page_bytes() const {
  return block_size() * num_kv_heads_ * key_head_size_ * element_bytes();
}

int64_t AttentionSpec::value_page_bytes() const {
  return block_size() * num_kv_heads_ * value_head_size_ * element_bytes();
}

int64_t AttentionSpec::scale_page_bytes() const {
  // One float32 scale per (token, kv_head) for K and one for V.
  return quant_ == KVQuant::kNone ? 0 : block_size() * num_kv_heads_ * 2 * 4;
}

int64_t AttentionSpec::page_size_bytes() const {
  return key_page_bytes() + value_page_bytes() + scale_page_bytes();
}

std::string AttentionSpec::describe() const {
  std::ostringstream os;
  os << spec_kind_name(kind()) << extra_describe() << "(block_size=" << block_size()
     << ", kv_heads=" << num_kv_heads_ << ", head_size=" << key_head_size_;
  if (value_head_size_ != key_head_size_) os << "/" << value_head_size_;
  os << ", dtype=" << dtype_name(dtype_);
  if (quant_ != KVQuant::kNone) os << ", quant=" << kv_quant_name(quant_);
  os << ")";
  return os.str();
}

bool AttentionSpec::same_page_layout(const AttentionSpec& o) const {
  return block_size() == o.block_size() && num_kv_heads_ == o.num_kv_heads_ &&
         key_head_size_ == o.key_head_size_ && value_head_size_ == o.value_head_size_ &&
         dtype_ == o.dtype_ && quant_ == o.quant_;
}

bool AttentionSpec::equals(const KVCacheSpec& other) const {
  if (other.kind() != kind()) return false;
  const auto& o = static_cast<const AttentionSpec&>(other);
  return same_page_layout(o) && extra_field() == o.extra_field();
}

FullAttentionSpec::FullAttentionSpec(const AttentionShape& s)
    : AttentionSpec(SpecKind::kFullAttention, s.block_size, s.num_kv_heads, s.key_head_size,
                    s.value_head_size, s.dtype, s.quant) {}

int64_t FullAttentionSpec::max_memory_usage_bytes(const CacheLimits& limits) const {
  limits.validate();
  return cdiv(limits.max_model_len, block_size()) * page_size_bytes();
}

SlidingWindowSpec::SlidingWindowSpec(const AttentionShape& s, int64_t window)
    : AttentionSpec(SpecKind::kSlidingWindow, s.block_size, s.num_kv_heads, s.key_head_size,
                    s.value_head_size, s.dtype, s.quant),
      window_(window) {
  TESSERA_CHECK(window > 0, "window must be positive, got ", window);
}

int64_t SlidingWindowSpec::max_memory_usage_bytes(const CacheLimits& limits) const {
  limits.validate();
  const int64_t tokens =
      std::min(window_ - 1 + limits.max_num_batched_tokens, limits.max_model_len);
  // +1: the window may start in the middle of a page.
  return (cdiv(tokens, block_size()) + 1) * page_size_bytes();
}

std::string SlidingWindowSpec::extra_describe() const {
  return "[window=" + std::to_string(window_) + "]";
}

ChunkedLocalAttentionSpec::ChunkedLocalAttentionSpec(const AttentionShape& s, int64_t chunk_size)
    : AttentionSpec(SpecKind::kChunkedLocal, s.block_size, s.num_kv_heads, s.key_head_size,
                    s.value_head_size, s.dtype, s.quant),
      chunk_size_(chunk_size) {
  TESSERA_CHECK(chunk_size > 0, "chunk_size must be positive, got ", chunk_size);
}

int64_t ChunkedLocalAttentionSpec::max_memory_usage_bytes(const CacheLimits& limits) const {
  limits.validate();
  const int64_t tokens =
      std::min(chunk_size_ + limits.max_num_batched_tokens, limits.max_model_len);
  return cdiv(tokens, block_size()) * page_size_bytes();
}

std::string ChunkedLocalAttentionSpec::extra_describe() const {
  return "[chunk=" + std::to_string(chunk_size_) + "]";
}

CrossAttentionSpec::CrossAttentionSpec(const AttentionShape& s)
    : AttentionSpec(SpecKind::kCrossAttention, s.block_size, s.num_kv_heads, s.key_head_size,
                    s.value_head_size, s.dtype, s.quant) {}

int64_t CrossAttentionSpec::max_memory_usage_bytes(const CacheLimits& limits) const {
  limits.validate();
  return cdiv(limits.max_encoder_len, block_size()) * page_size_bytes();
}

EncoderOnlySpec::EncoderOnlySpec(const AttentionShape& s)
    : AttentionSpec(SpecKind::kEncoderOnly, s.block_size, s.num_kv_heads, s.key_head_size,
                    s.value_head_size, s.dtype, s.quant) {}

int64_t EncoderOnlySpec::max_memory_usage_bytes(const CacheLimits& limits) const {
  limits.validate();
  return 0;
}

// ---- state ----

StateSpec::StateSpec(SpecKind kind, std::vector<State> states)
    : KVCacheSpec(kind, 1), states_(std::move(states)) {
  TESSERA_CHECK(!states_.empty(), "states must not be empty");
  for (const auto& st : states_) {
    for (size_t i = 0; i < st.shape.size(); ++i) {
      TESSERA_CHECK(st.shape[i] > 0, st.name, " state shape[", i, "] must be positive, got ",
                    st.shape[i]);
    }
  }
}

int64_t StateSpec::page_size_bytes() const {
  int64_t total = 0;
  for (const auto& st : states_) {
    int64_t n = static_cast<int64_t>(dtype_size(st.dtype));
    for (int64_t d : st.shape) n *= d;
    total += n;
  }
  return total;
}

int64_t StateSpec::max_memory_usage_bytes(const CacheLimits& limits) const {
  limits.validate();
  return page_size_bytes();
}

std::string StateSpec::describe() const {
  std::ostringstream os;
  os << spec_kind_name(kind()) << "(";
  for (size_t i = 0; i < states_.size(); ++i) {
    if (i) os << ", ";
    os << states_[i].name << "=[";
    for (size_t j = 0; j < states_[i].shape.size(); ++j) {
      os << (j ? "," : "") << states_[i].shape[j];
    }
    os << "] " << dtype_name(states_[i].dtype);
  }
  os << ")";
  return os.str();
}

bool StateSpec::equals(const KVCacheSpec& other) const {
  if (other.kind() != kind()) return false;
  const auto& o = static_cast<const StateSpec&>(other);
  if (o.states_.size() != states_.size()) return false;
  for (size_t i = 0; i < states_.size(); ++i) {
    if (o.states_[i].shape != states_[i].shape || o.states_[i].dtype != states_[i].dtype) {
      return false;
    }
  }
  return true;
}

MambaSpec::MambaSpec(int version, std::vector<State> states)
    : StateSpec(SpecKind::kMamba, std::move(states)), version_(version) {
  TESSERA_CHECK(version == 1 || version == 2, "version must be 1 or 2, got ", version);
}

std::shared_ptr<const MambaSpec> MambaSpec::mamba1(int64_t intermediate_size, int64_t state_size,
                                                   int64_t conv_kernel, DType conv_dtype,
                                                   DType ssm_dtype) {
  TESSERA_CHECK(intermediate_size > 0, "intermediate_size must be positive, got ",
                intermediate_size);
  TESSERA_CHECK(state_size > 0, "state_size must be positive, got ", state_size);
  TESSERA_CHECK(conv_kernel > 1, "conv_kernel must be > 1, got ", conv_kernel);
  return std::make_shared<const MambaSpec>(
      1, std::vector<State>{{"conv", {intermediate_size, conv_kernel - 1}, conv_dtype},
                            {"ssm", {intermediate_size, state_size}, ssm_dtype}});
}

std::shared_ptr<const MambaSpec> MambaSpec::mamba2(int64_t intermediate_size, int64_t n_groups,
                                                   int64_t num_heads, int64_t head_dim,
                                                   int64_t state_size, int64_t conv_kernel,
                                                   DType conv_dtype, DType ssm_dtype) {
  TESSERA_CHECK(intermediate_size > 0, "intermediate_size must be positive, got ",
                intermediate_size);
  TESSERA_CHECK(n_groups > 0, "n_groups must be positive, got ", n_groups);
  TESSERA_CHECK(num_heads > 0, "num_heads must be positive, got ", num_heads);
  TESSERA_CHECK(head_dim > 0, "head_dim must be positive, got ", head_dim);
  TESSERA_CHECK(state_size > 0, "state_size must be positive, got ", state_size);
  TESSERA_CHECK(conv_kernel > 1, "conv_kernel must be > 1, got ", conv_kernel);
  const int64_t conv_dim = intermediate_size + 2 * n_groups * state_size;
  return std::make_shared<const MambaSpec>(
      2, std::vector<State>{{"conv", {conv_kernel - 1, conv_dim}, conv_dtype},
                            {"ssm", {num_heads, head_dim, state_size}, ssm_dtype}});
}

LinearAttentionSpec::LinearAttentionSpec(std::vector<State> states)
    : StateSpec(SpecKind::kLinearAttention, std::move(states)) {}

std::shared_ptr<const LinearAttentionSpec> LinearAttentionSpec::gated_delta(
    int64_t num_k_heads, int64_t num_v_heads, int64_t head_k_dim, int64_t head_v_dim,
    int64_t conv_kernel, DType conv_dtype, DType state_dtype) {
  TESSERA_CHECK(num_k_heads > 0, "num_k_heads must be positive, got ", num_k_heads);
  TESSERA_CHECK(num_v_heads > 0, "num_v_heads must be positive, got ", num_v_heads);
  TESSERA_CHECK(head_k_dim > 0, "head_k_dim must be positive, got ", head_k_dim);
  TESSERA_CHECK(head_v_dim > 0, "head_v_dim must be positive, got ", head_v_dim);
  TESSERA_CHECK(conv_kernel > 1, "conv_kernel must be > 1, got ", conv_kernel);
  const int64_t conv_dim = 2 * num_k_heads * head_k_dim + num_v_heads * head_v_dim;
  return std::make_shared<const LinearAttentionSpec>(
      std::vector<State>{{"conv", {conv_kernel - 1, conv_dim}, conv_dtype},
                         {"recurrent", {num_v_heads, head_k_dim, head_v_dim}, state_dtype}});
}

}  // namespace tessera::caches
