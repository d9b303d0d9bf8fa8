// Sampler: each processing step against its formula computed here in double precision (and the
// repetition penalty and the warpers against Hugging Face transformers' own processors, run in the
// test venv); sampled frequencies over 100,000 draws against the expected distribution with a
// chi-square test for several parameter sets; seeded rows give the same tokens whatever their
// batch; raw logprobs; NaN rows; bad input.
#include "runtime/engine/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <sstream>
#include <string>

#include "common/error.h"

namespace tessera::engine {
namespace {

using scheduler::SamplingParams;
constexpr double kInf = std::numeric_limits<double>::infinity();

// ---- the reference: the documented order, in double, one row at a time ----

struct History {
  std::vector<int32_t> prompt, output;
};

std::vector<double> reference_logits(std::vector<double> x, const SamplingParams& p,
                                     const History& h, const std::vector<int32_t>& eos) {
  const auto V = static_cast<int32_t>(x.size());
  if (!p.allowed_token_ids.empty()) {
    std::vector<bool> ok(V, false);
    for (int32_t id : p.allowed_token_ids) ok[id] = true;
    for (int32_t v = 0; v < V; ++v) {
      if (!ok[v]) x[v] = -kInf;
    }
  }
  if (p.constraint) {
    std::vector<bool> ok(V, false);
    for (int32_t id : p.constraint->allowed(h.output)) ok[id] = true;
    for (int32_t v = 0; v < V; ++v) {
      if (!ok[v]) x[v] = -kInf;
    }
  }
  for (const auto& word : p.bad_words_ids) {
    // Banned when the generated tokens end with the word's all-but-last ids.
    const size_t k = word.size() - 1;
    if (h.output.size() < k) continue;
    if (std::vector<int32_t>(h.output.end() - static_cast<std::ptrdiff_t>(k), h.output.end()) ==
        std::vector<int32_t>(word.begin(), word.end() - 1)) {
      x[word.back()] = -kInf;
    }
  }
  for (const auto& [id, bias] : p.logit_bias) x[id] += bias;
  if (static_cast<int64_t>(h.output.size()) < p.min_tokens) {
    for (int32_t id : p.stop_token_ids) x[id] = -kInf;
    if (!p.ignore_eos) {
      for (int32_t id : eos) x[id] = -kInf;
    }
  }
  if (p.repetition_penalty != 1.0f) {
    std::vector<bool> seen(V, false);
    for (int32_t id : h.prompt) seen[id] = true;
    for (int32_t id : h.output) seen[id] = true;
    for (int32_t v = 0; v < V; ++v) {
      if (seen[v]) x[v] = x[v] < 0 ? x[v] * p.repetition_penalty : x[v] / p.repetition_penalty;
    }
  }
  std::vector<double> count(V, 0);
  for (int32_t id : h.output) count[id] += 1;
  for (int32_t v = 0; v < V; ++v) {
    x[v] -= p.frequency_penalty * count[v] + p.presence_penalty * (count[v] > 0 ? 1 : 0);
  }
  if (p.greedy()) return x;
  for (double& v : x) v /= p.temperature;
  auto softmax = [](const std::vector<double>& l) {
    double m = -kInf;
    for (double v : l) m = std::max(m, v);
    std::vector<double> e(l.size());
    double s = 0;
    for (size_t i = 0; i < l.size(); ++i) s += e[i] = l[i] == -kInf ? 0 : std::exp(l[i] - m);
    for (double& v : e) v /= s;
    return e;
  };
  if (p.min_p > 0) {
    const auto pr = softmax(x);
    const double top = *std::max_element(pr.begin(), pr.end());
    for (int32_t v = 0; v < V; ++v) {
      if (pr[v] < p.min_p * top) x[v] = -kInf;
    }
  }
  std::vector<int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return x[a] > x[b]; });
  if (p.top_k > 0) {
    for (int32_t i = p.top_k; i < V; ++i) x[order[i]] = -kInf;
  }
  if (p.top_p < 1) {
    const auto pr = softmax(x);
    double before = 0;
    for (int32_t i = 0; i < V; ++i) {
      const int32_t v = order[i];
      if (i > 0 && before >= p.top_p) x[v] = -kInf;
      before += pr[v];
    }
  }
  return x;
}

std::vector<double> probs_of(const std::vector<double>& l) {
  double m = -kInf;
  for (double v : l) m = std::max(m, v);
  std::vector<double> e(l.size());
  double s = 0;
  for (size_t i = 0; i < l.size(); ++i) s += e[i] = l[i] == -kInf ? 0 : std::exp(l[i] - m);
  for (double& v : e) v /= s;
  return e;
}

// Fixed logits without ties: a spread of positive and negative values.
std::vector<double> fixed_logits(int32_t V, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> n(0.0, 1.5);
  std::vector<double> x(V);
  for (auto& v : x) v = n(rng);
  return x;
}

torch::Tensor to_tensor(const std::vector<std::vector<double>>& rows) {
  const auto B = static_cast<int64_t>(rows.size()), V = static_cast<int64_t>(rows[0].size());
  torch::Tensor t = torch::empty({B, V}, torch::kFloat64);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t v = 0; v < V; ++v) t[b][v] = rows[b][v];
  }
  return t.to(torch::kFloat32);
}

SamplerRow row(const SamplingParams& p, const History& h) {
  return {&p, std::span<const int32_t>(h.prompt), std::span<const int32_t>(h.output)};
}

void expect_logits_near(const torch::Tensor& got_row, const std::vector<double>& want,
                        const std::string& what) {
  const torch::Tensor g = got_row.to(torch::kFloat64).contiguous();
  for (size_t v = 0; v < want.size(); ++v) {
    const double x = g[static_cast<int64_t>(v)].item<double>();
    if (want[v] == -kInf) {
      EXPECT_EQ(x, -kInf) << what << " token " << v;
    } else {
      EXPECT_NEAR(x, want[v], 1e-5 * std::max(1.0, std::abs(want[v]))) << what << " token " << v;
    }
  }
}

// A guided-decoding constraint that depends on the generated tokens: ids 3 + (output length) % 4,
// 9, 14 and 21.
struct FakeConstraint : scheduler::TokenConstraint {
  std::vector<int32_t> allowed(std::span<const int32_t> out) const override {
    return {static_cast<int32_t>(3 + out.size() % 4), 9, 14, 21};
  }
};

// Parameter sets exercised by the formula and chi-square tests.
struct Case {
  std::string name;
  SamplingParams p;
  History h;
};

std::vector<Case> cases() {
  std::vector<Case> c;
  auto add = [&](std::string name, auto edit, History h = {}) {
    Case k{std::move(name), {}, std::move(h)};
    edit(k.p);
    c.push_back(std::move(k));
  };
  const History hist{{1, 4, 4, 9, 17}, {2, 4, 2, 2, 11}};
  add("plain", [](SamplingParams&) {});
  add("temperature_0.6", [](SamplingParams& p) { p.temperature = 0.6f; });
  add("temperature_1.7", [](SamplingParams& p) { p.temperature = 1.7f; });
  add("top_k_5", [](SamplingParams& p) { p.top_k = 5; });
  add("top_p_0.7", [](SamplingParams& p) { p.top_p = 0.7f; });
  add("min_p_0.15", [](SamplingParams& p) { p.min_p = 0.15f; });
  add("logit_bias", [](SamplingParams& p) { p.logit_bias = {{3, 2.5f}, {9, -1.25f}, {0, 4.0f}}; });
  add("allowed_token_ids", [](SamplingParams& p) { p.allowed_token_ids = {2, 7, 7, 13, 20, 23}; });
  add("allowed_token_ids_top_k_bias", [](SamplingParams& p) {
    p.allowed_token_ids = {1, 4, 6, 9, 15, 18, 22};
    p.top_k = 4;
    p.temperature = 1.4f;
    p.logit_bias = {{3, 100.0f}, {9, 1.5f}};  // 3 is not allowed: stays out however pushed
  });
  add(
      "constraint_and_allowed_ids",
      [](SamplingParams& p) {
        p.constraint = std::make_shared<FakeConstraint>();
        p.allowed_token_ids = {4, 9, 14, 20};  // both apply: 4, 9 and 14 remain
        p.temperature = 1.3f;
      },
      hist);
  // Output {2, 4, 2, 2, 11}: {11, 6} and {2, 11, 8} match their prefix (6, 8 banned), {5} always
  // (5 banned), {2, 2, 9} and {4, 11, 3} do not (9 and 3 stay), {1, 2, 4, 2, 2, 11, 7} is longer
  // than the output + 1 (7 stays; the prompt does not count).
  add(
      "bad_words",
      [](SamplingParams& p) {
        p.bad_words_ids = {{11, 6}, {2, 11, 8}, {5}, {2, 2, 9}, {4, 11, 3}, {1, 2, 4, 2, 2, 11, 7}};
      },
      hist);
  add(
      "repetition_1.3", [](SamplingParams& p) { p.repetition_penalty = 1.3f; }, hist);
  add(
      "repetition_0.8", [](SamplingParams& p) { p.repetition_penalty = 0.8f; }, hist);
  add(
      "frequency_presence",
      [](SamplingParams& p) {
        p.frequency_penalty = 0.7f;
        p.presence_penalty = -0.4f;
      },
      hist);
  add(
      "all_together",
      [](SamplingParams& p) {
        p.temperature = 0.8f;
        p.min_p = 0.02f;
        p.top_k = 12;
        p.top_p = 0.9f;
        p.repetition_penalty = 1.2f;
        p.frequency_penalty = 0.3f;
        p.presence_penalty = 0.2f;
        p.min_tokens = 8;
        p.stop_token_ids = {3};
        p.logit_bias = {{3, 50.0f}, {4, -3.0f}, {11, 1.5f}};  // 3 stays masked by min_tokens
      },
      hist);
  return c;
}

constexpr int32_t kVocab = 24;
const std::vector<int32_t> kEos = {0, 5};

TEST(Sampler, EachStepMatchesItsFormula) {
  Sampler s({kEos, 1});
  const auto logits = fixed_logits(kVocab, 7);
  for (const Case& c : cases()) {
    const torch::Tensor got = s.processed_logits(to_tensor({logits}), std::vector{row(c.p, c.h)});
    expect_logits_near(got[0], reference_logits(logits, c.p, c.h, kEos), c.name);
  }
  // min_tokens: eos and stop ids masked until min_tokens are out; ignore_eos keeps eos.
  SamplingParams m;
  m.min_tokens = 3;
  m.stop_token_ids = {7};
  History short_h{{1}, {2, 3}}, long_h{{1}, {2, 3, 4}};
  auto got =
      s.processed_logits(to_tensor({logits, logits}), std::vector{row(m, short_h), row(m, long_h)});
  EXPECT_EQ(got[0][0].item<float>(), -std::numeric_limits<float>::infinity());
  EXPECT_EQ(got[0][5].item<float>(), -std::numeric_limits<float>::infinity());
  EXPECT_EQ(got[0][7].item<float>(), -std::numeric_limits<float>::infinity());
  EXPECT_NEAR(got[1][7].item<float>(), logits[7], 1e-5);
  m.ignore_eos = true;
  got = s.processed_logits(to_tensor({logits}), std::vector{row(m, short_h)});
  EXPECT_NEAR(got[0][0].item<float>(), logits[0], 1e-5);
  EXPECT_EQ(got[0][7].item<float>(), -std::numeric_limits<float>::infinity());
}

TEST(Sampler, BatchedRowsEachGetTheirOwnParameters) {
  Sampler s({kEos, 1});
  const auto all = cases();
  std::vector<std::vector<double>> logits;
  std::vector<SamplerRow> rows;
  for (size_t i = 0; i < all.size(); ++i) {
    logits.push_back(fixed_logits(kVocab, 100 + static_cast<uint32_t>(i)));
    rows.push_back(row(all[i].p, all[i].h));
  }
  const torch::Tensor got = s.processed_logits(to_tensor(logits), rows);
  for (size_t i = 0; i < all.size(); ++i) {
    expect_logits_near(got[static_cast<int64_t>(i)],
                       reference_logits(logits[i], all[i].p, all[i].h, kEos), all[i].name);
  }
}

// Runs `code` under the test venv's Python (transformers); empty when there is none.
std::string run_venv_python(const std::string& code) {
  const char* py = std::getenv("TESSERA_VENV_PYTHON");
  if (!py || !std::ifstream(py)) return "";
  char path[] = "/tmp/tessera_sampler_hf_XXXXXX";
  const int fd = mkstemp(path);
  if (fd < 0) return "";
  {
    std::ofstream f(path);
    f << code;
  }
  std::string out;
  const std::string cmd = std::string(py) + " " + path + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int rc = pclose(p);
  std::remove(path);
  close(fd);
  return rc == 0 ? out : "ERROR " + out;
}

TEST(Sampler, MatchesHuggingFaceProcessors) {
  const auto logits = fixed_logits(kVocab, 7);
  const History hist{{1, 4, 4, 9, 17}, {2, 4, 2, 2, 11}};
  struct HfCase {
    std::string python;  // processor applied to `scores` with `ids`
    SamplingParams p;
  };
  std::vector<HfCase> hf;
  auto add = [&](std::string py, auto edit) {
    HfCase c{std::move(py), {}};
    edit(c.p);
    hf.push_back(std::move(c));
  };
  add("RepetitionPenaltyLogitsProcessor(1.3)", [](auto& p) { p.repetition_penalty = 1.3f; });
  add("RepetitionPenaltyLogitsProcessor(0.7)", [](auto& p) { p.repetition_penalty = 0.7f; });
  add("TemperatureLogitsWarper(0.6)", [](auto& p) { p.temperature = 0.6f; });
  add("TopKLogitsWarper(5)", [](auto& p) { p.top_k = 5; });
  add("TopPLogitsWarper(0.7)", [](auto& p) { p.top_p = 0.7f; });
  add("MinPLogitsWarper(0.15)", [](auto& p) { p.min_p = 0.15f; });
  std::ostringstream code;
  code.precision(17);
  code << "import torch\nfrom transformers.generation.logits_process import *\n"
       << "ids = torch.tensor([[";
  for (int32_t t : hist.prompt) code << t << ",";
  for (int32_t t : hist.output) code << t << ",";
  code << "]])\nbase = torch.tensor([[";
  for (double v : logits) code << v << ",";
  code << "]], dtype=torch.float32)\n";
  for (const auto& c : hf) {
    code << "out = " << c.python << "(ids, base.clone())\n"
         << "print(' '.join(repr(float(v)) for v in out[0]))\n";
  }
  const std::string out = run_venv_python(code.str());
  if (out.empty()) GTEST_SKIP() << "no test venv (TESSERA_VENV_PYTHON) with transformers";
  ASSERT_EQ(out.rfind("ERROR", 0), std::string::npos) << out;
  std::istringstream lines(out);
  Sampler s({{}, 1});
  for (const auto& c : hf) {
    std::string line;
    ASSERT_TRUE(std::getline(lines, line)) << c.python;
    std::istringstream vals(line);
    std::vector<double> want;
    std::string tok;
    while (vals >> tok) want.push_back(tok == "-inf" ? -kInf : std::stod(tok));
    ASSERT_EQ(want.size(), logits.size()) << c.python << ": " << line;
    const torch::Tensor got = s.processed_logits(to_tensor({logits}), std::vector{row(c.p, hist)});
    expect_logits_near(got[0], want, c.python);
  }
}

// Upper regularised incomplete gamma Q(a, x) (Numerical Recipes: series below a + 1, else a
// continued fraction): the chi-square p-value is Q(dof / 2, chi2 / 2).
double gamma_q(double a, double x) {
  const double gln = std::lgamma(a);
  if (x < a + 1) {
    double sum = 1 / a, del = sum, ap = a;
    for (int n = 0; n < 1000; ++n) {
      del *= x / ++ap;
      sum += del;
      if (std::abs(del) < std::abs(sum) * 1e-15) break;
    }
    return 1 - sum * std::exp(-x + a * std::log(x) - gln);
  }
  double b = x + 1 - a, c = 1 / 1e-300, d = 1 / b, h = d;
  for (int i = 1; i < 1000; ++i) {
    const double an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (std::abs(d) < 1e-300) d = 1e-300;
    c = b + an / c;
    if (std::abs(c) < 1e-300) c = 1e-300;
    d = 1 / d;
    const double del = d * c;
    h *= del;
    if (std::abs(del - 1) < 1e-15) break;
  }
  return std::exp(-x + a * std::log(x) - gln) * h;
}

// Chi-square goodness of fit; tokens of zero expected probability must never be drawn. Bins with
// an expected count below 5 are pooled.
double chi_square_p(const std::vector<int64_t>& counts, const std::vector<double>& probs, int64_t n,
                    const std::string& what) {
  double chi2 = 0, pooled_obs = 0, pooled_exp = 0;
  int bins = 0;
  for (size_t v = 0; v < probs.size(); ++v) {
    if (probs[v] == 0) {
      EXPECT_EQ(counts[v], 0) << what << ": token " << v << " has zero probability";
      continue;
    }
    const double e = probs[v] * static_cast<double>(n);
    if (e < 5) {
      pooled_obs += static_cast<double>(counts[v]);
      pooled_exp += e;
      continue;
    }
    chi2 += (counts[v] - e) * (counts[v] - e) / e;
    ++bins;
  }
  if (pooled_exp > 0) {
    chi2 += (pooled_obs - pooled_exp) * (pooled_obs - pooled_exp) / pooled_exp;
    ++bins;
  }
  if (bins < 2) return 1.0;
  return gamma_q((bins - 1) / 2.0, chi2 / 2);
}

TEST(Sampler, DrawFrequenciesPassChiSquare) {
  constexpr int64_t kDraws = 100000, kBatch = 5000;
  const auto logits = fixed_logits(kVocab, 7);
  for (const Case& c : cases()) {
    Sampler s({kEos, 42});
    const auto probs = probs_of(reference_logits(logits, c.p, c.h, kEos));
    std::vector<int64_t> counts(kVocab, 0);
    const torch::Tensor batch = to_tensor({logits}).expand({kBatch, kVocab}).contiguous();
    const std::vector<SamplerRow> rows(kBatch, row(c.p, c.h));
    for (int64_t done = 0; done < kDraws; done += kBatch) {
      for (int32_t t : s.sample(batch, rows).token_ids) {
        ASSERT_GE(t, 0);
        ++counts[t];
      }
    }
    const double p = chi_square_p(counts, probs, kDraws, c.name);
    EXPECT_GT(p, 0.001) << c.name;
  }
}

TEST(Sampler, SeededDrawsFollowTheDistributionToo) {
  // One seeded draw per (seed, position): across 100,000 of them the frequencies fit.
  const auto logits = fixed_logits(kVocab, 11);
  SamplingParams p;
  p.temperature = 0.9f;
  p.top_p = 0.95f;
  const auto probs = probs_of(reference_logits(logits, p, {}, kEos));
  constexpr int64_t kDraws = 100000, kBatch = 5000;
  std::vector<SamplingParams> params(kBatch, p);
  std::vector<std::vector<int32_t>> outputs(kBatch);
  std::vector<int64_t> counts(kVocab, 0);
  Sampler s({kEos, 1});
  const torch::Tensor batch = to_tensor({logits}).expand({kBatch, kVocab}).contiguous();
  for (int64_t done = 0; done < kDraws; done += kBatch) {
    std::vector<SamplerRow> rows;
    for (int64_t b = 0; b < kBatch; ++b) {
      params[b].seed = static_cast<uint64_t>(done + b);
      outputs[b].assign(static_cast<size_t>(done / kBatch), 1);  // positions vary too
      rows.push_back({&params[b], {}, outputs[b]});
    }
    for (int32_t t : s.sample(batch, rows).token_ids) ++counts[t];
  }
  EXPECT_GT(chi_square_p(counts, probs, kDraws, "seeded"), 0.001);
}

TEST(Sampler, SeededRowsIgnoreTheirBatch) {
  const int32_t V = 1000;
  std::mt19937 rng(3);
  std::normal_distribution<double> n(0, 2);
  SamplingParams seeded;
  seeded.temperature = 1.1f;
  seeded.top_k = 200;
  seeded.top_p = 0.95f;
  seeded.seed = 1234;
  SamplingParams other = seeded;
  other.seed.reset();
  SamplingParams greedy;
  greedy.temperature = 0;
  SamplingParams other_seed = seeded;
  other_seed.seed = 99;
  History h{{5, 6, 7}, {8}};
  std::vector<double> mine(V), noise(V);
  for (auto& v : mine) v = n(rng);
  // The same request at 20 positions, alone and inside batches of different sizes, mixes and
  // rows; the sampler's own stream advances differently each time.
  for (int pos = 0; pos < 20; ++pos) {
    History hp = h;
    hp.output.assign(static_cast<size_t>(pos + 1), 8);
    Sampler alone({{}, 1});
    const int32_t want = alone.sample(to_tensor({mine}), std::vector{row(seeded, hp)}).token_ids[0];
    for (int trial = 0; trial < 4; ++trial) {
      Sampler s({{}, static_cast<uint64_t>(trial + 7)});
      const int batch = 1 + trial * 5;
      std::vector<std::vector<double>> logits;
      std::vector<SamplerRow> rows;
      const SamplingParams* kinds[] = {&other, &greedy, &other_seed};
      const int at = (trial * 3) % batch;
      for (int b = 0; b < batch; ++b) {
        if (b == at) {
          logits.push_back(mine);
          rows.push_back(row(seeded, hp));
        } else {
          for (auto& v : noise) v = n(rng);
          logits.push_back(noise);
          rows.push_back(row(*kinds[b % 3], h));
        }
      }
      const auto out = s.sample(to_tensor(logits), rows);
      EXPECT_EQ(out.token_ids[at], want) << "position " << pos << " trial " << trial;
    }
  }
  // Seeds and positions matter: 20 positions do not all give one token.
  std::map<int32_t, int> seen;
  Sampler s({{}, 1});
  for (int pos = 0; pos < 20; ++pos) {
    History hp = h;
    hp.output.assign(static_cast<size_t>(pos + 1), 8);
    ++seen[s.sample(to_tensor({mine}), std::vector{row(seeded, hp)}).token_ids[0]];
  }
  EXPECT_GT(seen.size(), 3u);
}

TEST(Sampler, GreedyTakesThePenalizedArgmax) {
  Sampler s({kEos, 1});
  auto logits = fixed_logits(kVocab, 7);
  SamplingParams g;
  g.temperature = 0;
  g.top_k = 1;  // ignored
  const int32_t best =
      static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  EXPECT_EQ(s.sample(to_tensor({logits}), std::vector{row(g, {})}).token_ids[0], best);
  // A strong repetition penalty on the best token moves the argmax.
  g.repetition_penalty = 2.0f;
  History h{{best}, {}};
  const auto pen = reference_logits(logits, g, h, kEos);
  const int32_t want = static_cast<int32_t>(std::max_element(pen.begin(), pen.end()) - pen.begin());
  EXPECT_EQ(s.sample(to_tensor({logits}), std::vector{row(g, h)}).token_ids[0], want);
  // logit_bias: +100 forces a token, -100 on the best one moves the argmax to the runner-up (the
  // all-greedy fast path must not skip it).
  SamplingParams b;
  b.temperature = 0;
  b.logit_bias = {{5, 100.0f}};
  EXPECT_EQ(s.sample(to_tensor({logits}), std::vector{row(b, {})}).token_ids[0], 5);
  b.logit_bias = {{best, -100.0f}};
  auto rest = logits;
  rest[best] = -kInf;
  const int32_t second =
      static_cast<int32_t>(std::max_element(rest.begin(), rest.end()) - rest.begin());
  EXPECT_EQ(s.sample(to_tensor({logits}), std::vector{row(b, {})}).token_ids[0], second);
  // allowed_token_ids without the best token: the argmax of the allowed ones (the all-greedy
  // fast path must not skip it), beside an unrestricted row that keeps the best.
  SamplingParams a;
  a.temperature = 0;
  for (int32_t v = 0; v < kVocab; v += 3) {
    if (v != best) a.allowed_token_ids.push_back(v);
  }
  int32_t allowed_best = a.allowed_token_ids[0];
  for (int32_t v : a.allowed_token_ids) {
    if (logits[v] > logits[allowed_best]) allowed_best = v;
  }
  const auto both =
      s.sample(to_tensor({logits, logits}), std::vector{row(a, {}), row(g, {})}).token_ids;
  EXPECT_EQ(both[0], allowed_best);
  EXPECT_NE(both[0], best);
  g.repetition_penalty = 1.0f;
  EXPECT_EQ(s.sample(to_tensor({logits, logits}), std::vector{row(a, {}), row(g, {})}).token_ids,
            (std::vector<int32_t>{allowed_best, best}));
  // bad_words: the best token as a one-token word is banned at once; as the end of a two-token
  // word only after that word's first token.
  SamplingParams w;
  w.temperature = 0;
  w.bad_words_ids = {{best}};
  EXPECT_EQ(s.sample(to_tensor({logits}), std::vector{row(w, {})}).token_ids[0], second);
  w.bad_words_ids = {{7, best}};
  History after7{{1}, {3, 7}}, after3{{1}, {7, 3}};
  EXPECT_EQ(
      s.sample(to_tensor({logits, logits}), std::vector{row(w, after7), row(w, after3)}).token_ids,
      (std::vector<int32_t>{second, best}));
}

TEST(Sampler, LogprobsAreOfTheRawDistribution) {
  Sampler s({kEos, 1});
  const auto logits = fixed_logits(kVocab, 7);
  SamplingParams p;
  p.temperature = 0.5f;
  p.repetition_penalty = 1.5f;
  p.logprobs = 3;
  SamplingParams none;
  History h{{1, 2}, {3}};
  const auto out = s.sample(to_tensor({logits, logits}), std::vector{row(p, h), row(none, h)});
  double m = *std::max_element(logits.begin(), logits.end()), z = 0;
  for (double v : logits) z += std::exp(v - m);
  auto lp = [&](int32_t v) { return logits[v] - m - std::log(z); };
  ASSERT_EQ(out.logprobs.size(), 2u);
  EXPECT_NEAR(out.logprobs[0], lp(out.token_ids[0]), 1e-5);
  ASSERT_EQ(out.top_logprobs[0].size(), 3u);
  EXPECT_TRUE(out.top_logprobs[1].empty());
  std::vector<int32_t> order(kVocab);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  for (int k = 0; k < 3; ++k) {
    EXPECT_EQ(out.top_logprobs[0][k].id, order[k]);
    EXPECT_NEAR(out.top_logprobs[0][k].logprob, lp(order[k]), 1e-5);
  }
  // allowed_token_ids changes the draw, not the logprobs (vLLM returns the raw distribution):
  // the token is one of the allowed ids, with its raw logprob, and the top list is unchanged.
  SamplingParams a = p;
  a.allowed_token_ids = {order[5], order[9]};
  const auto out_a = s.sample(to_tensor({logits}), std::vector{row(a, h)});
  EXPECT_TRUE(out_a.token_ids[0] == order[5] || out_a.token_ids[0] == order[9])
      << out_a.token_ids[0];
  EXPECT_NEAR(out_a.logprobs[0], lp(out_a.token_ids[0]), 1e-5);
  for (int k = 0; k < 3; ++k) EXPECT_EQ(out_a.top_logprobs[0][k].id, order[k]);
  // Nobody asks: no logprobs at all.
  EXPECT_TRUE(s.sample(to_tensor({logits}), std::vector{row(none, h)}).logprobs.empty());
}

TEST(Sampler, NanRowsGetNoTokenAndBadInputIsRefused) {
  Sampler s({kEos, 1});
  auto logits = fixed_logits(kVocab, 7);
  auto nan_row = logits;
  nan_row[3] = std::nan("");
  SamplingParams p, g;
  g.temperature = 0;
  const auto out = s.sample(to_tensor({logits, nan_row, nan_row}),
                            std::vector{row(p, {}), row(p, {}), row(g, {})});
  EXPECT_GE(out.token_ids[0], 0);
  EXPECT_EQ(out.token_ids[1], -1);
  EXPECT_EQ(out.token_ids[2], -1);
  EXPECT_THROW(s.sample(to_tensor({logits}), std::vector{row(p, {}), row(p, {})}), Error);
  EXPECT_THROW(s.sample(torch::zeros({kVocab}), std::vector{row(p, {})}), Error);
  EXPECT_THROW(s.sample(torch::zeros({1, kVocab}, torch::kInt64), std::vector{row(p, {})}), Error);
  SamplerRow null_row;
  EXPECT_THROW(s.sample(torch::zeros({1, kVocab}), std::vector{null_row}), Error);
  // Half precision logits are accepted.
  EXPECT_GE(
      s.sample(to_tensor({logits}).to(torch::kBFloat16), std::vector{row(p, {})}).token_ids[0], 0);
}

}  // namespace
}  // namespace tessera::engine
