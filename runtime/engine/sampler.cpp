#include "runtime/engine/sampler.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>

#include "common/error.h"

namespace tessera::engine {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

double unit(uint64_t bits) { return static_cast<double>(bits >> 11) * 0x1.0p-53; }

// A [rows, 1] float32 column of one parameter per row, on `device`.
template <typename F>
torch::Tensor column(std::span<const SamplerRow> rows, const torch::Device& device, F value) {
  std::vector<float> v(rows.size());
  for (size_t r = 0; r < rows.size(); ++r) v[r] = value(*rows[r].params);
  return torch::from_blob(v.data(), {static_cast<int64_t>(v.size()), 1}, torch::kFloat32)
      .to(device, /*non_blocking=*/false, /*copy=*/true);
}

torch::Tensor index_tensor(const std::vector<int64_t>& idx, const torch::Device& device) {
  return torch::from_blob(const_cast<int64_t*>(idx.data()), {static_cast<int64_t>(idx.size())},
                          torch::kInt64)
      .to(device, false, true);
}

void check_inputs(const torch::Tensor& logits, std::span<const SamplerRow> rows) {
  TESSERA_CHECK(logits.dim() == 2, "logits must be [rows, vocab], got ", logits.dim(),
                " dimensions");
  TESSERA_CHECK(logits.size(0) == static_cast<int64_t>(rows.size()), "logits have ", logits.size(0),
                " rows but ", rows.size(), " rows of parameters were given");
  TESSERA_CHECK(logits.size(1) >= 1, "logits must have a vocabulary, got size 0");
  const auto st = logits.scalar_type();
  TESSERA_CHECK(st == torch::kFloat32 || st == torch::kFloat16 || st == torch::kBFloat16 ||
                    st == torch::kFloat64,
                "logits must be float32, float16, bfloat16 or float64, got ", c10::toString(st));
  for (size_t r = 0; r < rows.size(); ++r) {
    TESSERA_CHECK(rows[r].params != nullptr, "rows[", r, "].params must not be null");
  }
}

// The common offline case: every row greedy, no penalty, no min_tokens mask, no logprobs, float32
// logits on the CPU. One read of each row gives the first largest logit (torch's argmax) and
// whether the row holds NaN or +inf (then no token), instead of a copy and five passes.
bool greedy_only_cpu(const torch::Tensor& logits, std::span<const SamplerRow> rows,
                     const std::vector<int32_t>& eos_ids, SamplerOutput& out) {
  if (!logits.device().is_cpu() || logits.scalar_type() != torch::kFloat32 ||
      !logits.is_contiguous()) {
    return false;
  }
  for (const auto& r : rows) {
    const auto& p = *r.params;
    if (!p.greedy() || p.logprobs >= 0 || p.repetition_penalty != 1.0f ||
        p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f || !p.logit_bias.empty() ||
        !p.allowed_token_ids.empty() || !p.bad_words_ids.empty() || p.constraint) {
      return false;
    }
    const bool masking = static_cast<int64_t>(r.output_ids.size()) < p.min_tokens &&
                         (!p.stop_token_ids.empty() || (!p.ignore_eos && !eos_ids.empty()));
    if (masking) return false;
  }
  const int64_t B = logits.size(0), V = logits.size(1);
  const float* base = logits.data_ptr<float>();
  constexpr float kInf = std::numeric_limits<float>::infinity();
  at::parallel_for(0, B, 8, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const float* x = base + b * V;
      float best = x[0];
      int64_t at = 0;
      bool bad = false;
      for (int64_t v = 0; v < V; ++v) {
        const float f = x[v];
        bad |= (f != f) | (f == kInf);
        if (f > best) {
          best = f;
          at = v;
        }
      }
      out.token_ids[b] = bad ? -1 : static_cast<int32_t>(at);
    }
  });
  return true;
}
}  // namespace

Sampler::Sampler(SamplerConfig config) : config_(std::move(config)), rng_(config_.seed) {}

double Sampler::seeded_uniform(uint64_t seed, int64_t position) {
  return unit(
      splitmix64(splitmix64(seed) ^ splitmix64(0x5eedull + static_cast<uint64_t>(position))));
}

torch::Tensor Sampler::penalized(const torch::Tensor& logits,
                                 std::span<const SamplerRow> rows) const {
  const int64_t B = logits.size(0), V = logits.size(1);
  const torch::Device device = logits.device();
  torch::Tensor x = logits.to(torch::kFloat32, /*non_blocking=*/false, /*copy=*/true);

  // allowed_token_ids first (vLLM v1's order): every other id of those rows is out.
  std::vector<int64_t> allowed;
  std::vector<int64_t> restricted_rows;
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = *rows[b].params;
    if (p.allowed_token_ids.empty() && !p.constraint) continue;
    restricted_rows.push_back(b);
    std::vector<int32_t> ids =
        p.constraint ? p.constraint->allowed(rows[b].output_ids) : p.allowed_token_ids;
    for (int32_t id : ids) {
      const bool listed = !p.constraint || p.allowed_token_ids.empty() ||
                          std::find(p.allowed_token_ids.begin(), p.allowed_token_ids.end(), id) !=
                              p.allowed_token_ids.end();
      if (id >= 0 && id < V && listed) allowed.push_back(b * V + id);
    }
  }
  if (!restricted_rows.empty()) {
    torch::Tensor out = torch::zeros({B}, torch::dtype(torch::kBool).device(device));
    out.index_fill_(0, index_tensor(restricted_rows, device), true);
    torch::Tensor keep = torch::zeros({B * V}, torch::dtype(torch::kBool).device(device));
    if (!allowed.empty()) keep.index_fill_(0, index_tensor(allowed, device), true);
    x.masked_fill_(out.view({B, 1}) & keep.view({B, V}).logical_not(), kNegInf);
  }

  // bad_words (vLLM): a sequence whose all-but-last ids end the generated tokens bans its last id.
  std::vector<int64_t> banned;
  for (int64_t b = 0; b < B; ++b) {
    const auto out = rows[b].output_ids;
    for (const auto& word : rows[b].params->bad_words_ids) {
      if (word.empty() || word.size() > out.size() + 1) continue;
      const size_t prefix = word.size() - 1;
      if (std::equal(word.begin(), word.begin() + static_cast<std::ptrdiff_t>(prefix),
                     out.end() - static_cast<std::ptrdiff_t>(prefix)) &&
          word.back() >= 0 && word.back() < V) {
        banned.push_back(b * V + word.back());
      }
    }
  }
  if (!banned.empty()) x.view({-1}).index_fill_(0, index_tensor(banned, device), kNegInf);

  // logit_bias: the logits as the request wants them, then everything else.
  std::vector<int64_t> biased;
  std::vector<float> biases;
  for (int64_t b = 0; b < B; ++b) {
    for (const auto& [id, bias] : rows[b].params->logit_bias) {
      if (id < 0 || id >= V) continue;
      biased.push_back(b * V + id);
      biases.push_back(bias);
    }
  }
  if (!biased.empty()) {
    const auto n = static_cast<int64_t>(biases.size());
    x.view({-1}).index_add_(0, index_tensor(biased, device),
                            torch::from_blob(biases.data(), {n}, torch::kFloat32).to(device));
  }

  // min_tokens: the ids that would stop the request are not drawn yet.
  std::vector<int64_t> masked;
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = *rows[b].params;
    if (static_cast<int64_t>(rows[b].output_ids.size()) >= p.min_tokens) continue;
    auto mask = [&](int32_t id) {
      if (id >= 0 && id < V) masked.push_back(b * V + id);
    };
    for (int32_t id : p.stop_token_ids) mask(id);
    if (!p.ignore_eos) {
      for (int32_t id : config_.eos_token_ids) mask(id);
    }
  }
  if (!masked.empty()) x.view({-1}).index_fill_(0, index_tensor(masked, device), kNegInf);

  // Repetition penalty over prompt ∪ output (index_fill_ sets each id once however often seen).
  bool any_rep = false, any_freq_pres = false;
  for (const auto& r : rows) {
    any_rep |= r.params->repetition_penalty != 1.0f;
    any_freq_pres |= r.params->frequency_penalty != 0.0f || r.params->presence_penalty != 0.0f;
  }
  if (any_rep) {
    std::vector<int64_t> seen;
    for (int64_t b = 0; b < B; ++b) {
      if (rows[b].params->repetition_penalty == 1.0f) continue;
      for (auto ids : {rows[b].prompt_ids, rows[b].output_ids}) {
        for (int32_t id : ids) {
          if (id >= 0 && id < V) seen.push_back(b * V + id);
        }
      }
    }
    if (!seen.empty()) {
      torch::Tensor mask = torch::zeros({B * V}, torch::dtype(torch::kBool).device(device));
      mask.index_fill_(0, index_tensor(seen, device), true);
      mask = mask.view({B, V});
      const torch::Tensor pen =
          column(rows, device, [](const auto& p) { return p.repetition_penalty; });
      x = torch::where(mask, torch::where(x < 0, x * pen, x / pen), x);
    }
  }
  // Frequency and presence penalties over the generated tokens only.
  if (any_freq_pres) {
    std::vector<int64_t> out;
    for (int64_t b = 0; b < B; ++b) {
      const auto& p = *rows[b].params;
      if (p.frequency_penalty == 0.0f && p.presence_penalty == 0.0f) continue;
      for (int32_t id : rows[b].output_ids) {
        if (id >= 0 && id < V) out.push_back(b * V + id);
      }
    }
    if (!out.empty()) {
      torch::Tensor counts = torch::zeros({B * V}, torch::dtype(torch::kFloat32).device(device));
      counts.index_add_(0, index_tensor(out, device),
                        torch::ones({static_cast<int64_t>(out.size())}, counts.options()));
      counts = counts.view({B, V});
      const torch::Tensor freq =
          column(rows, device, [](const auto& p) { return p.frequency_penalty; });
      const torch::Tensor pres =
          column(rows, device, [](const auto& p) { return p.presence_penalty; });
      x = x - freq * counts - pres * (counts > 0).to(torch::kFloat32);
    }
  }
  return x;
}

torch::Tensor Sampler::truncated(torch::Tensor x, std::span<const SamplerRow> rows) const {
  const int64_t V = x.size(1);
  const torch::Device device = x.device();
  bool any_temp = false, any_min_p = false, any_top_k = false, any_top_p = false;
  for (const auto& r : rows) {
    const auto& p = *r.params;
    if (p.greedy()) continue;
    any_temp |= p.temperature != 1.0f;
    any_min_p |= p.min_p > 0.0f;
    any_top_k |= p.top_k > 0 && p.top_k < V;
    any_top_p |= p.top_p < 1.0f;
  }
  if (any_temp) {
    x = x / column(rows, device, [](const auto& p) { return p.greedy() ? 1.0f : p.temperature; });
  }
  if (any_min_p) {
    const torch::Tensor probs = torch::softmax(x, -1);
    const torch::Tensor min_p =
        column(rows, device, [](const auto& p) { return p.greedy() ? 0.0f : p.min_p; });
    const torch::Tensor threshold = min_p * std::get<0>(probs.max(-1, /*keepdim=*/true));
    x = x.masked_fill(probs < threshold, kNegInf);
  }
  if (any_top_k || any_top_p) {
    auto [sorted, order] = x.sort(-1, /*descending=*/true);
    if (any_top_k) {
      const torch::Tensor k = column(rows, device, [&](const auto& p) {
        return static_cast<float>(p.greedy() || p.top_k <= 0 ? V : std::min<int64_t>(p.top_k, V));
      });
      const torch::Tensor pos = torch::arange(V, torch::dtype(torch::kFloat32).device(device));
      sorted = sorted.masked_fill(pos.unsqueeze(0) >= k, kNegInf);
    }
    if (any_top_p) {
      const torch::Tensor probs = torch::softmax(sorted, -1);
      const torch::Tensor before = probs.cumsum(-1) - probs;  // mass of the more likely tokens
      const torch::Tensor top_p =
          column(rows, device, [](const auto& p) { return p.greedy() ? 1.0f : p.top_p; });
      torch::Tensor remove = before >= top_p;
      remove.select(1, 0).fill_(false);  // the most likely token always stays
      sorted = sorted.masked_fill(remove, kNegInf);
    }
    x = torch::empty_like(x).scatter_(-1, order, sorted);
  }
  return x;
}

torch::Tensor Sampler::processed_logits(const torch::Tensor& logits,
                                        std::span<const SamplerRow> rows) const {
  check_inputs(logits, rows);
  return truncated(penalized(logits, rows), rows);
}

SamplerOutput Sampler::sample(const torch::Tensor& logits, std::span<const SamplerRow> rows) {
  check_inputs(logits, rows);
  torch::NoGradGuard no_grad;
  const int64_t B = logits.size(0), V = logits.size(1);
  const torch::Device device = logits.device();
  SamplerOutput out;
  out.token_ids.assign(B, -1);
  if (B == 0) return out;

  int32_t max_logprobs = -1;
  bool all_greedy = true;
  for (const auto& r : rows) {
    max_logprobs = std::max(max_logprobs, r.params->logprobs);
    all_greedy &= r.params->greedy();
  }
  if (all_greedy && max_logprobs < 0 && greedy_only_cpu(logits, rows, config_.eos_token_ids, out)) {
    return out;
  }
  torch::Tensor raw_logprobs;
  if (max_logprobs >= 0) raw_logprobs = torch::log_softmax(logits.to(torch::kFloat32), -1);

  torch::Tensor x = penalized(logits, rows);
  const torch::Tensor greedy_tokens = x.argmax(-1);
  torch::Tensor tokens = greedy_tokens;
  if (!all_greedy) {
    x = truncated(x, rows);
    const torch::Tensor cdf = torch::softmax(x, -1).to(torch::kFloat64).cumsum(-1);
    std::vector<double> u(B);
    std::vector<uint8_t> greedy(B);
    for (int64_t b = 0; b < B; ++b) {
      const auto& p = *rows[b].params;
      greedy[b] = p.greedy();
      if (p.greedy()) {
        u[b] = 0.0;
      } else if (p.seed) {
        const auto position =
            static_cast<int64_t>(rows[b].prompt_ids.size() + rows[b].output_ids.size());
        u[b] = seeded_uniform(*p.seed, position);
      } else {
        u[b] = unit(rng_());
      }
    }
    const torch::Tensor uu =
        torch::from_blob(u.data(), {B, 1}, torch::kFloat64).to(device, false, true);
    // The first token whose cumulative mass exceeds u * total: never one with zero mass.
    const torch::Tensor target = uu * cdf.select(1, V - 1).unsqueeze(1);
    const torch::Tensor drawn =
        torch::searchsorted(cdf, target, /*out_int32=*/false, /*right=*/true)
            .squeeze(1)
            .clamp_max(V - 1);
    const torch::Tensor is_greedy = torch::from_blob(greedy.data(), {B}, torch::kUInt8)
                                        .to(device, false, true)
                                        .to(torch::kBool);
    tokens = torch::where(is_greedy, greedy_tokens, drawn);
  }
  // NaN or +inf anywhere in a row: no token.
  const torch::Tensor f = logits.to(torch::kFloat32);
  const torch::Tensor bad =
      (torch::isnan(f) | (f == std::numeric_limits<float>::infinity())).any(-1);
  tokens = torch::where(bad, torch::full_like(tokens, -1), tokens);

  const torch::Tensor tok_cpu = tokens.to(torch::kCPU, torch::kInt64).contiguous();
  const int64_t* tp = tok_cpu.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) out.token_ids[b] = static_cast<int32_t>(tp[b]);

  if (max_logprobs >= 0) {
    const torch::Tensor safe = tokens.clamp_min(0).unsqueeze(1);
    const torch::Tensor chosen =
        raw_logprobs.gather(1, safe).squeeze(1).to(torch::kCPU).contiguous();
    out.logprobs.assign(chosen.data_ptr<float>(), chosen.data_ptr<float>() + B);
    out.top_logprobs.resize(B);
    const int64_t n = std::min<int64_t>(max_logprobs, V);
    if (n > 0) {
      auto [vals, ids] = raw_logprobs.topk(n, -1);
      vals = vals.to(torch::kCPU).contiguous();
      ids = ids.to(torch::kCPU, torch::kInt64).contiguous();
      const float* vp = vals.data_ptr<float>();
      const int64_t* ip = ids.data_ptr<int64_t>();
      for (int64_t b = 0; b < B; ++b) {
        const int64_t want = std::min<int64_t>(rows[b].params->logprobs, n);
        for (int64_t k = 0; k < want; ++k) {
          out.top_logprobs[b].push_back({static_cast<int32_t>(ip[b * n + k]), vp[b * n + k]});
        }
      }
    }
  }
  return out;
}

}  // namespace tessera::engine
