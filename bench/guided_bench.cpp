// `tessera bench guided`: the per-token cost of JSON mode (response_format json_object), the
// token mask a sampler applies at each step of a constrained answer, against XGrammar (PyPI
// `xgrammar`, vLLM's default structured-output backend) measured in the same run on the same
// vocabulary and the same answers.
//  - vocabulary: a LLaMA 3-style byte-level BPE (Split regex + ByteLevel) trained by the
//    `tokenizers` package on the licence texts Debian ships (base-files) and JSON made from them,
//    saved with transformers' PreTrainedTokenizerFast (tokenizer.json + tokenizer_config.json),
//    loaded by Tessera as `tessera serve` loads a model's tokenizer and by XGrammar through
//    TokenizerInfo.from_huggingface;
//  - answers: JSON objects made by Python's json.dumps (nested objects and arrays, strings with
//    escapes and non-ASCII text, numbers, literals; compact and indented), tokenized by the
//    package; each step the answer's next token is the one "sampled";
//  - tessera: a JsonObjectConstraint per answer (as serving makes one per request) on the
//    tokenizer's shared mask cache: at each step allowed(output so far), then complete(output) as
//    the handler asks. "tessera" runs each round on a fresh cache that other answers (twice as
//    many, made the same way, untimed) filled first: a server in steady state meeting answers it
//    has not seen; "tessera_cold" on a fresh, empty cache each round: a server's first requests;
//  - baseline "scan": the automaton's state carried from step to step and the vocabulary scanned
//    with it at each step (JsonMaskCache::scan), no cache: what one writes first;
//  - xgrammar: a GrammarMatcher per answer on the builtin JSON grammar compiled once for the
//    vocabulary (as vLLM caches it): at each step fill_next_token_bitmask, then accept_token,
//    timed inside Python around the calls;
//  - checks: each answer token is allowed at its step by Tessera, the end of sequence only after
//    the last, and XGrammar accepts every token; per step the two allowed sets are compared (a
//    count and an order-free digest) and the share of equal steps reported;
//  - rounds interleave the three; per-token medians and spreads over rounds, ratios per round.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "bench/bench.h"
#include "bench/python_child.h"
#include "bench/timing.h"
#include "common/error.h"
#include "runtime/serving/guided.h"
#include "runtime/serving/hf_tokenizer.h"
#include "runtime/serving/json_guide.h"

namespace tessera::bench {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using serving::JsonMaskCache;
using serving::JsonObjectConstraint;
using serving::JsonState;

// The Python side: trains the vocabulary, makes and tokenizes the answers, compiles XGrammar's
// JSON grammar; then answers "check" (per-step allowed-set digests) and "run" (timings).
const char* kPythonScript = R"PY(
import json, os, random, sys, time
os.environ.setdefault("TVM_FFI_DISABLE_TORCH_C_DLPACK", "1")
from tokenizers import Tokenizer, Regex, decoders, models, pre_tokenizers, trainers

lines_path, out_dir, vocab_size, n_answers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
lines = open(lines_path, encoding="utf-8").read().split("\n")
words = " ".join(lines).split()
rng = random.Random(20261201)

def value(depth):
    k = rng.randrange(8 if depth < 4 else 5)
    if k == 0: return " ".join(rng.choice(words) for _ in range(rng.randrange(1, 12)))
    if k == 1: return rng.choice([0, 1, -3, 12.5, 1e-7, 123456789, -0.25, 6.02e23])
    if k == 2: return rng.choice([True, False, None])
    if k == 3: return rng.choice(words) + rng.choice([" caf\u00e9", " \u20ac5", " \U0001F600", "\n\t\"q\"", " \\ /"])
    if k == 4: return rng.randrange(-10**6, 10**6)
    if k in (5, 6): return {rng.choice(words): value(depth + 1) for _ in range(rng.randrange(1, 6))}
    return [value(depth + 1) for _ in range(rng.randrange(0, 6))]

def answer():
    obj = {rng.choice(words): value(1) for _ in range(rng.randrange(3, 8))}
    return json.dumps(obj, ensure_ascii=rng.random() < 0.3, indent=rng.choice([None, None, 2]))

corpus = [answer() for _ in range(400)]
answers = [answer() for _ in range(n_answers)]
warmup = [answer() for _ in range(2 * n_answers)]
PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
       r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
t = Tokenizer(models.BPE())
t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PAT), "isolated"),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
t.decoder = decoders.ByteLevel()
t.train_from_iterator(lines + corpus, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
    special_tokens=["<|end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
from transformers import PreTrainedTokenizerFast
hf = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|end|>", clean_up_tokenization_spaces=False)
hf.save_pretrained(out_dir)
eos = t.token_to_id("<|end|>")
ids = [t.encode(a).ids for a in answers]
warmup_ids = [t.encode(a).ids for a in warmup]

import numpy as np
import xgrammar as xgr
t0 = time.perf_counter()
info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=t.get_vocab_size(), stop_token_ids=[eos])
grammar = xgr.GrammarCompiler(info, max_threads=1).compile_builtin_json_grammar()
compile_s = time.perf_counter() - t0
V = t.get_vocab_size()
bitmask = xgr.allocate_token_bitmask(1, info.vocab_size)
M = np.uint64(0x9E3779B97F4A7C15)

def digest(allowed):  # order-free: the sum of a mix of each id (the C++ side computes the same)
    h = allowed.astype(np.uint64) + np.uint64(1)
    h = h * M
    h = h ^ (h >> np.uint64(29))
    h = h * M
    return int(np.sum(h, dtype=np.uint64)), int(allowed.size)

def allowed_ids():
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), bitorder="little")[:V]
    return np.nonzero(bits)[0]

print(json.dumps({"dir": out_dir, "vocab_size": V, "eos": eos, "answers": ids, "warmup": warmup_ids,
                  "compile_s": compile_s,
                  "xgrammar": getattr(xgr, "__version__", "")}), flush=True)
for cmd in sys.stdin:
    cmd = cmd.strip()
    if not cmd:
        break
    if cmd == "check":
        out = []
        for a in ids:
            m = xgr.GrammarMatcher(grammar)
            steps, accepted = [], True
            for tok in a:
                m.fill_next_token_bitmask(bitmask)
                steps.append(digest(allowed_ids()))
                accepted = m.accept_token(tok) and accepted
            m.fill_next_token_bitmask(bitmask)
            steps.append(digest(allowed_ids()))
            out.append({"digests": [str(d) for d, _ in steps], "counts": [c for _, c in steps],
                        "accepted": accepted, "can_end": bool(m.accept_token(eos))})
        print(json.dumps(out), flush=True)
    elif cmd.startswith("ids "):  # the allowed ids at one step of one answer
        a, k = (int(x) for x in cmd.split()[1:])
        m = xgr.GrammarMatcher(grammar)
        for tok in ids[a][:k]:
            m.accept_token(tok)
        m.fill_next_token_bitmask(bitmask)
        print(json.dumps([int(i) for i in allowed_ids()]), flush=True)
    else:
        fill = accept = 0.0
        steps = 0
        for a in ids:
            m = xgr.GrammarMatcher(grammar)
            for tok in a:
                t0 = time.perf_counter(); m.fill_next_token_bitmask(bitmask)
                t1 = time.perf_counter(); m.accept_token(tok)
                t2 = time.perf_counter()
                fill += t1 - t0; accept += t2 - t1; steps += 1
        print(json.dumps({"fill_s": fill, "accept_s": accept, "steps": steps}), flush=True)
)PY";

// The Python side's digest of an allowed set: order-free, the sum of a mix of each id.
uint64_t mix_digest(const std::vector<int32_t>& ids) {
  constexpr uint64_t kM = 0x9E3779B97F4A7C15ull;
  uint64_t sum = 0;
  for (int32_t id : ids) {
    uint64_t h = (static_cast<uint64_t>(id) + 1) * kM;
    h ^= h >> 29;
    sum += h * kM;
  }
  return sum;
}

// The allowed ids as a set: sorted, without repeats (scan() lists them by first byte).
std::vector<int32_t> as_set(std::vector<int32_t> ids) {
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

int run(const BenchOptions& opt) {
  if (opt.rank != 0) return 0;  // one thread on one rank; the others have nothing to do
  const std::vector<std::string> lines = licence_lines();
  const int vocab = opt.quick ? 8000 : 32000;
  const int n_answers = opt.quick ? 6 : 24;
  const int rounds = opt.quick ? 3 : 7;
  PythonPeer py(
      kPythonScript, lines,
      [&](const fs::path& dir) {
        return std::vector{(dir / "model").string(), std::to_string(vocab),
                           std::to_string(n_answers)};
      },
      {"RAYON_NUM_THREADS=1", "TOKENIZERS_PARALLELISM=false", "OMP_NUM_THREADS=1"},
      "the `tokenizers`, `transformers` and `xgrammar` packages");
  const nlohmann::json& ready = py.ready();
  const auto answers = ready["answers"].get<std::vector<std::vector<int32_t>>>();
  const auto warmup = ready["warmup"].get<std::vector<std::vector<int32_t>>>();
  int64_t total_steps = 0;
  for (const auto& a : answers) total_steps += static_cast<int64_t>(a.size());
  TESSERA_CHECK(total_steps > 0, "the answers have no tokens");

  // Tessera's side of the setup: the tokenizer as serving loads it and its piece table.
  const auto t_setup = Clock::now();
  const auto tok = serving::load_serving_tokenizer((py.dir() / "model").string());
  const auto pieces = tok->piece_table();
  const auto masks = tok->json_mask_cache();
  const double setup_s = elapsed_ms(t_setup) / 1e3;
  const std::vector<int32_t> eos = tok->eos_ids();
  TESSERA_CHECK(!eos.empty() && eos[0] == ready["eos"].get<int32_t>(),
                "the saved tokenizer's end of sequence is not <|end|>");

  // A token's bytes as text: printable ASCII as it is, other bytes as \xNN.
  auto printable = [&](int32_t id) {
    std::string out;
    for (unsigned char b : pieces->text[static_cast<size_t>(id)]) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02X", b);
      out += b >= 0x20 && b < 0x7F ? std::string(1, static_cast<char>(b)) : std::string(hex);
    }
    return out;
  };

  // Checks: Tessera allows each answer token and the end only after the last; the allowed sets
  // of both sides, step by step.
  py.send("check");
  const auto theirs = py.receive();
  bool tessera_valid = true, xgrammar_valid = true;
  std::string first_failure;                             // Tessera's first wrong step
  nlohmann::json differences = nlohmann::json::array();  // examples of steps that differ
  bool start_example = false;
  int later_examples = 0;
  int64_t compared = 0, equal = 0, tessera_larger = 0;
  for (size_t a = 0; a < answers.size(); ++a) {
    const auto& ids = answers[a];
    const JsonObjectConstraint c(masks);
    const auto& digests = theirs[a]["digests"];
    const auto& counts = theirs[a]["counts"];
    xgrammar_valid =
        xgrammar_valid && theirs[a]["accepted"].get<bool>() && theirs[a]["can_end"].get<bool>();
    for (size_t k = 0; k <= ids.size(); ++k) {
      const std::span<const int32_t> out(ids.data(), k);
      const auto allowed = as_set(c.allowed(out));
      const bool has_eos = std::binary_search(allowed.begin(), allowed.end(), eos[0]);
      std::string wrong;
      if (k < ids.size()) {
        if (!std::binary_search(allowed.begin(), allowed.end(), ids[k])) {
          wrong = "refuses token " + std::to_string(ids[k]) + " '" +
                  pieces->text[static_cast<size_t>(ids[k])] + "'";
        } else if (has_eos || c.complete(out)) {
          wrong = "would end the answer";
        }
      } else if (!has_eos || !c.complete(out)) {
        wrong = "does not end the answer";
      }
      if (!wrong.empty() && tessera_valid) {
        tessera_valid = false;
        std::string text;
        for (size_t i = 0; i < k; ++i) text += pieces->text[static_cast<size_t>(ids[i])];
        first_failure = "answer " + std::to_string(a) + ", step " + std::to_string(k) + ": " +
                        wrong + " after '" + text + "'";
      }
      ++compared;
      const auto n = static_cast<int64_t>(allowed.size());
      if (n == counts[k].get<int64_t>() &&
          std::to_string(mix_digest(allowed)) == digests[k].get<std::string>()) {
        ++equal;
      } else {
        if (n > counts[k].get<int64_t>()) ++tessera_larger;
        // Examples: the first differing step at an answer's start, and the first three after.
        const bool want_example = k == 0 ? !start_example : later_examples < 3;
        if (want_example) {
          if (k == 0) {
            start_example = true;
          } else {
            ++later_examples;
          }
          py.send("ids " + std::to_string(a) + " " + std::to_string(k));
          const auto xg = as_set(py.receive().get<std::vector<int32_t>>());
          std::vector<int32_t> only_ours, only_theirs;
          std::set_difference(allowed.begin(), allowed.end(), xg.begin(), xg.end(),
                              std::back_inserter(only_ours));
          std::set_difference(xg.begin(), xg.end(), allowed.begin(), allowed.end(),
                              std::back_inserter(only_theirs));
          auto texts = [&](const std::vector<int32_t>& v) {
            nlohmann::json t = nlohmann::json::array();
            for (size_t i = 0; i < v.size() && i < 12; ++i) t.push_back(printable(v[i]));
            return t;
          };
          std::string before;
          for (size_t i = 0; i < k; ++i) before += pieces->text[static_cast<size_t>(ids[i])];
          differences.push_back(
              {{"answer", a},
               {"step", k},
               {"after", nlohmann::json(before).dump(-1, ' ', true,
                                                     nlohmann::json::error_handler_t::replace)},
               {"only_tessera", only_ours.size()},
               {"only_xgrammar", only_theirs.size()},
               {"only_tessera_first", texts(only_ours)},
               {"only_xgrammar_first", texts(only_theirs)}});
        }
      }
    }
  }

  // Timed rounds, interleaved: tessera (warm, cold), scan, xgrammar.
  std::vector<double> ours_us, cold_us, scan_us, xgr_us, xgr_fill_us;
  size_t sink = 0;
  auto serve = [&](const std::vector<std::vector<int32_t>>& all,
                   const std::shared_ptr<const JsonMaskCache>& cache) {
    const auto t0 = Clock::now();
    for (const auto& ids : all) {
      const JsonObjectConstraint c(cache);
      for (size_t k = 0; k < ids.size(); ++k) {
        const std::span<const int32_t> out(ids.data(), k);
        sink += c.allowed(out).size();
        sink += c.complete(std::span<const int32_t>(ids.data(), k + 1)) ? 1 : 0;
      }
    }
    return elapsed_ms(t0) * 1e3 / static_cast<double>(total_steps);
  };
  for (int r = 0; r < rounds; ++r) {
    const auto warm = std::make_shared<const JsonMaskCache>(pieces, eos);
    serve(warmup, warm);
    ours_us.push_back(serve(answers, warm));
    cold_us.push_back(serve(answers, std::make_shared<const JsonMaskCache>(pieces, eos)));
    auto t0 = Clock::now();
    for (const auto& ids : answers) {
      JsonState state;
      for (int32_t id : ids) {
        sink += masks->scan(state).size();
        state.feed(pieces->text[static_cast<size_t>(id)]);
        sink += state.done() ? 1 : 0;
      }
    }
    scan_us.push_back(elapsed_ms(t0) * 1e3 / static_cast<double>(total_steps));
    py.send("run");
    const auto reply = py.receive();
    TESSERA_CHECK(reply["steps"].get<int64_t>() == total_steps, "XGrammar ran ",
                  reply["steps"].get<int64_t>(), " steps, not ", total_steps);
    const double fill = reply["fill_s"].get<double>(), accept = reply["accept_s"].get<double>();
    xgr_us.push_back((fill + accept) * 1e6 / static_cast<double>(total_steps));
    xgr_fill_us.push_back(fill * 1e6 / static_cast<double>(total_steps));
  }

  const Spread ours = spread_of(ours_us), cold = spread_of(cold_us), scan = spread_of(scan_us),
               xg = spread_of(xgr_us);
  const Spread vs_xgr = spread_of(per_round_ratios(ours_us, xgr_us));
  const Spread cold_vs_xgr = spread_of(per_round_ratios(cold_us, xgr_us));
  const Spread vs_scan = spread_of(per_round_ratios(ours_us, scan_us));
  const double equal_share = static_cast<double>(equal) / static_cast<double>(compared);
  nlohmann::json j = {
      {"per_token_us",
       {{"tessera", to_json(ours)},
        {"tessera_cold", to_json(cold)},
        {"scan_baseline", to_json(scan)},
        {"xgrammar", to_json(xg)},
        {"xgrammar_fill_only", to_json(spread_of(xgr_fill_us))}}},
      {"tessera_over_xgrammar_per_round", to_json(vs_xgr)},
      {"tessera_cold_over_xgrammar_per_round", to_json(cold_vs_xgr)},
      {"tessera_over_scan_per_round", to_json(vs_scan)},
      {"setup_s", {{"tessera_piece_table", setup_s}, {"xgrammar_compile", ready["compile_s"]}}},
      {"tessera_valid", tessera_valid},
      {"tessera_first_failure", first_failure},
      {"xgrammar_valid", xgrammar_valid},
      {"steps_compared", compared},
      {"steps_equal_allowed_sets", equal},
      {"steps_tessera_allows_more", tessera_larger},
      {"equal_share", equal_share},
      {"differences", differences},
      {"vocab_size", ready["vocab_size"]},
      {"answers", answers.size()},
      {"warmup_answers", warmup.size()},
      {"tokens", total_steps},
      {"rounds", rounds},
      {"threads", 1},
      {"xgrammar_version", ready["xgrammar"]},
      {"sink", sink % 2}};
  if (opt.json) {
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf(
        "JSON mode mask, per token (vocabulary %d, %zu answers, %lld tokens, %d rounds, one "
        "thread):\n"
        "  tessera       %8.2f us [%.2f-%.2f]\n  tessera cold  %8.2f us [%.2f-%.2f]\n"
        "  scan          %8.2f us [%.2f-%.2f]  (tessera x%.3f)\n"
        "  xgrammar      %8.2f us [%.2f-%.2f]  (tessera x%.3f, cold x%.3f)\n"
        "setup: piece table %.3f s, XGrammar compile %.3f s\n"
        "allowed sets equal at %lld of %lld steps (Tessera allows more at %lld); answers valid: "
        "tessera %s, xgrammar %s\n",
        ready["vocab_size"].get<int>(), answers.size(), static_cast<long long>(total_steps), rounds,
        ours.median, ours.min, ours.max, cold.median, cold.min, cold.max, scan.median, scan.min,
        scan.max, vs_scan.median, xg.median, xg.min, xg.max, vs_xgr.median, cold_vs_xgr.median,
        setup_s, ready["compile_s"].get<double>(), static_cast<long long>(equal),
        static_cast<long long>(compared), static_cast<long long>(tessera_larger),
        tessera_valid ? "yes" : "NO", xgrammar_valid ? "yes" : "NO");
    if (!tessera_valid) std::printf("Tessera's first wrong step: %s\n", first_failure.c_str());
    for (const auto& d : differences) std::printf("they differ: %s\n", d.dump().c_str());
  }
  return tessera_valid && xgrammar_valid ? 0 : 1;
}

}  // namespace

Benchmark guided_benchmark() {
  return {"guided",
          "JSON mode's token mask per step, Tessera vs XGrammar (and a plain vocabulary scan)",
          run};
}

}  // namespace tessera::bench
