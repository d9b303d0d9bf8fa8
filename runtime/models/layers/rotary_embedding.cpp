#include "runtime/models/layers/rotary_embedding.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <map>

#include "common/error.h"

namespace tessera::models {

namespace {

// transformers: 1 / base^(arange(0, dim, 2) / dim) in float32.
torch::Tensor default_inv_freq(double base, int64_t dim) {
  auto exponents =
      torch::arange(0, dim, 2, torch::kLong).to(torch::kFloat) / static_cast<double>(dim);
  return torch::pow(base, exponents).reciprocal();
}

// transformers' _compute_yarn_parameters (4.44: the ramp uses max_position_embeddings).
torch::Tensor yarn_inv_freq(const ModelConfig& c) {
  const auto& r = c.rope_scaling;
  const double base = c.rope_theta;
  const int64_t dim = c.head_dim;
  const double max_pos = static_cast<double>(c.max_position_embeddings);
  auto correction_dim = [&](double rotations) {
    return (dim * std::log(max_pos / (rotations * 2 * M_PI))) / (2 * std::log(base));
  };
  double low = std::max(std::floor(correction_dim(r.beta_fast)), 0.0);
  double high = std::min(std::ceil(correction_dim(r.beta_slow)), static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  auto pos_freqs = torch::pow(
      base, torch::arange(0, dim, 2, torch::kLong).to(torch::kFloat) / static_cast<double>(dim));
  auto extrapolation = pos_freqs.reciprocal();
  auto interpolation = (pos_freqs * r.factor).reciprocal();
  auto ramp = ((torch::arange(dim / 2, torch::kFloat) - low) / (high - low)).clamp(0, 1);
  auto extrapolation_factor = 1 - ramp;
  return interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor;
}

// transformers' _compute_llama3_parameters.
torch::Tensor llama3_inv_freq(const ModelConfig& c) {
  const auto& r = c.rope_scaling;
  auto inv = default_inv_freq(c.rope_theta, c.head_dim);
  const double old_len = static_cast<double>(r.original_max_position_embeddings);
  const double low_wavelen = old_len / r.low_freq_factor;
  const double high_wavelen = old_len / r.high_freq_factor;
  auto wavelen = 2 * M_PI / inv;
  auto llama = torch::where(wavelen > low_wavelen, inv / r.factor, inv);
  auto smooth = (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
  auto smoothed = (1 - smooth) * llama / r.factor + smooth * llama;
  auto medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
  return torch::where(medium, smoothed, llama);
}

// cos / sin [T, dim] of positions [T] with inv_freq [dim / 2], as transformers: the product in
// float32, then cat(freqs, freqs), cos / sin in float32, times the attention factor.
std::pair<torch::Tensor, torch::Tensor> table(const torch::Tensor& positions,
                                              const torch::Tensor& inv_freq, double factor) {
  auto freqs = positions.to(torch::kFloat).unsqueeze(1) * inv_freq.unsqueeze(0);
  auto emb = torch::cat({freqs, freqs}, 1);
  auto cos = emb.cos(), sin = emb.sin();
  if (factor != 1.0) {
    cos.mul_(factor);
    sin.mul_(factor);
  }
  return {cos, sin};
}

}  // namespace

torch::Tensor RotaryEmbedding::inv_freq(const ModelConfig& c, std::optional<int64_t> seq_len) {
  const auto& r = c.rope_scaling;
  switch (r.type) {
    case RopeScaling::Type::kDefault:
      return default_inv_freq(c.rope_theta, c.head_dim);
    case RopeScaling::Type::kLinear:
      return default_inv_freq(c.rope_theta, c.head_dim) / r.factor;
    case RopeScaling::Type::kDynamic: {
      // transformers' _compute_dynamic_ntk_parameters: the base grows with the sequence once it
      // is longer than max_position_embeddings.
      const double max_pos = static_cast<double>(c.max_position_embeddings);
      const double len =
          seq_len && *seq_len > c.max_position_embeddings ? static_cast<double>(*seq_len) : max_pos;
      const double dim = static_cast<double>(c.head_dim);
      const double base =
          c.rope_theta * std::pow(r.factor * len / max_pos - (r.factor - 1), dim / (dim - 2));
      return default_inv_freq(base, c.head_dim);
    }
    case RopeScaling::Type::kLlama3:
      return llama3_inv_freq(c);
    case RopeScaling::Type::kYarn:
      return yarn_inv_freq(c);
  }
  TESSERA_FAIL("unknown rope_scaling type");
}

double RotaryEmbedding::attention_factor(const ModelConfig& c) {
  if (c.rope_scaling.type != RopeScaling::Type::kYarn) return 1.0;
  if (c.rope_scaling.attention_factor) return *c.rope_scaling.attention_factor;
  return 0.1 * std::log(c.rope_scaling.factor) + 1.0;
}

RotaryEmbedding::RotaryEmbedding(const ModelConfig& config, int64_t max_positions,
                                 torch::Device device)
    : config_(config), max_positions_(max_positions) {
  TESSERA_CHECK(max_positions > 0, "max_positions must be positive, got ", max_positions);
  auto [cos, sin] =
      table(torch::arange(max_positions, torch::kLong), inv_freq(config), attention_factor(config));
  cos_ = cos.to(device);
  sin_ = sin.to(device);
}

bool RotaryEmbedding::needs_seq_lens() const {
  return config_.rope_scaling.type == RopeScaling::Type::kDynamic;
}

std::pair<torch::Tensor, torch::Tensor> RotaryEmbedding::cos_sin(
    const torch::Tensor& positions, const torch::Tensor& seq_lens) const {
  TESSERA_CHECK(positions.dim() == 1 && positions.scalar_type() == torch::kLong,
                "positions must be int64 [T], got ", positions.scalar_type(), " ",
                positions.sizes());
  auto idx = positions.to(cos_.device());
  torch::Tensor cos = cos_.index_select(0, idx), sin = sin_.index_select(0, idx);
  if (!needs_seq_lens()) return {cos, sin};
  TESSERA_CHECK(seq_lens.defined() && seq_lens.sizes() == positions.sizes(),
                "dynamic rope_scaling needs seq_lens shaped like positions ", positions.sizes());
  // Tokens of sequences longer than max_position_embeddings: frequencies of their length.
  auto lens = seq_lens.to(torch::kCPU).contiguous();
  const auto* l = lens.data_ptr<int64_t>();
  std::map<int64_t, std::vector<int64_t>> grown;
  for (int64_t i = 0; i < lens.numel(); ++i) {
    if (l[i] > config_.max_position_embeddings) grown[l[i]].push_back(i);
  }
  for (const auto& [len, rows] : grown) {
    auto r = torch::tensor(rows, torch::kLong).to(cos.device());
    auto [c, s] = table(positions.index_select(0, r.to(positions.device())).to(torch::kCPU),
                        inv_freq(config_, len), 1.0);
    cos.index_copy_(0, r, c.to(cos.device()));
    sin.index_copy_(0, r, s.to(sin.device()));
  }
  return {cos, sin};
}

torch::Tensor RotaryEmbedding::apply(const torch::Tensor& x, const torch::Tensor& cos,
                                     const torch::Tensor& sin) {
  TESSERA_CHECK(x.dim() == 3 && cos.dim() == 2 && cos.size(0) == x.size(0) &&
                    cos.size(1) == x.size(2) && sin.sizes() == cos.sizes(),
                "rotary: x [T, H, D] and cos / sin [T, D] expected, got ", x.sizes(), ", ",
                cos.sizes(), ", ", sin.sizes());
  const int64_t t = x.size(0), h = x.size(1), d = x.size(2), half = d / 2;
  const bool fast = x.device().is_cpu() && x.scalar_type() == torch::kFloat && x.stride(2) == 1 &&
                    x.stride(1) == d && cos.is_contiguous() && sin.is_contiguous() &&
                    cos.scalar_type() == torch::kFloat;
  if (!fast) {
    auto c = cos.unsqueeze(1).to(x.scalar_type()), s = sin.unsqueeze(1).to(x.scalar_type());
    auto rotated = torch::cat({-x.narrow(2, half, half), x.narrow(2, 0, half)}, 2);
    return x * c + rotated * s;
  }
  // One pass over x, no temporaries (x may be a column slice of the fused qkv projection).
  auto out = torch::empty({t, h, d}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t xs = x.stride(0);
  at::parallel_for(0, t, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* c = cp + i * d;
      const float* s = sp + i * d;
      for (int64_t j = 0; j < h; ++j) {
        const float* xi = xp + i * xs + j * d;
        float* o = op + (i * h + j) * d;
        for (int64_t k = 0; k < half; ++k) {
          o[k] = xi[k] * c[k] - xi[k + half] * s[k];
          o[k + half] = xi[k + half] * c[k + half] + xi[k] * s[k + half];
        }
      }
    }
  });
  return out;
}

}  // namespace tessera::models
