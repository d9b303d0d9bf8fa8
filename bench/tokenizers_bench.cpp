// `tessera bench tokenizers`: encode throughput on one thread, Tessera against the Hugging Face
// `tokenizers` package (Rust) measured in the same run on the same text.
//  - text: the licence texts Debian ships in /usr/share/common-licenses (package base-files),
//    one encode per non-empty line;
//  - tokenizers: trained by the package on that text (so both sides load the same tokenizer.json):
//    a LLaMA 3-style byte-level BPE (Split regex + ByteLevel; the headline), a LLaMA 2-style
//    SentencePiece BPE with byte fallback (no pre-tokenizer: each line is one word), and a BERT
//    WordPiece;
//  - baselines, both timed inside Python around the calls with RAYON_NUM_THREADS=1 and
//    TOKENIZERS_PARALLELISM=false: encode_batch(lines) and a loop of encode(line); the headline
//    "hf" is the faster of the two;
//  - cold (a freshly loaded tokenizer: word caches empty, as for text never seen before; the
//    headline) and warm (the same text again) encodes;
//  - rounds interleave Tessera and the package; medians and min/max over rounds. The ids of both
//    are checked to agree (a digest of every id).
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "bench/bench.h"
#include "bench/python_child.h"
#include "common/error.h"
#include "runtime/tokenizers/tokenizer.h"

namespace tessera::bench {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// The package's side: trains the tokenizers, then times encodes on request.
const char* kPythonScript = R"PY(
import json, os, sys, time
from tokenizers import Tokenizer, Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers

lines_path, out_dir = sys.argv[1], sys.argv[2]
lines = open(lines_path, encoding="utf-8").read().split("\n")
PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
       r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

def llama3():
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PAT), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=8000, show_progress=False,
        special_tokens=["<|begin_of_text|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    t.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
        special_tokens=[("<|begin_of_text|>", t.token_to_id("<|begin_of_text|>"))])
    return t

def llama2():
    t = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    t.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=8000, show_progress=False,
        special_tokens=["<unk>", "<s>", "</s>"]))
    j = json.loads(t.to_str())
    vocab = j["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    j["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    j["pre_tokenizer"] = None
    j["decoder"] = {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    return Tokenizer.from_str(json.dumps(j))

def bert():
    t = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    t.normalizer = normalizers.BertNormalizer(lowercase=True)
    t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    t.decoder = decoders.WordPiece()
    t.train_from_iterator(lines, trainers.WordPieceTrainer(vocab_size=8000, show_progress=False,
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    t.post_processor = processors.BertProcessing(("[SEP]", t.token_to_id("[SEP]")), ("[CLS]", t.token_to_id("[CLS]")))
    return t

def digest(encodings):
    h = 1469598103934665603
    for e in encodings:
        for i in e.ids:
            h = ((h ^ (i + 1)) * 1099511628211) % (1 << 64)
        h = ((h ^ 0) * 1099511628211) % (1 << 64)
    return h

toks = {"llama3_bytelevel_bpe": llama3(), "llama2_sentencepiece_bpe": llama2(), "bert_wordpiece": bert()}
ready = {}
for name, t in toks.items():
    path = os.path.join(out_dir, name + ".json")
    t.save(path)
    enc = t.encode_batch(lines)
    ready[name] = {"path": path, "tokens": sum(len(e.ids) for e in enc), "digest": str(digest(enc))}
print(json.dumps(ready), flush=True)
for cmd in sys.stdin:
    parts = cmd.split()
    if not parts:
        break
    name, mode = parts
    # cold: a freshly loaded tokenizer (its word cache empty), as for text never seen before
    t = Tokenizer.from_file(ready[name]["path"]) if mode == "cold" else toks[name]
    t0 = time.perf_counter(); t.encode_batch(lines); batch = time.perf_counter() - t0
    if mode == "cold":
        t = Tokenizer.from_file(ready[name]["path"])
    t0 = time.perf_counter()
    for l in lines:
        t.encode(l)
    loop = time.perf_counter() - t0
    print(json.dumps({"batch_s": batch, "loop_s": loop}), flush=True)
)PY";

uint64_t digest(const std::vector<std::vector<int32_t>>& all) {
  uint64_t h = 1469598103934665603ull;
  for (const auto& ids : all) {
    for (int32_t i : ids) h = (h ^ static_cast<uint64_t>(i + 1)) * 1099511628211ull;
    h = (h ^ 0) * 1099511628211ull;
  }
  return h;
}

struct Stats {
  double median, min, max;
};

Stats stats(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  const double med = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  return {med, v.front(), v.back()};
}

nlohmann::json to_json(const Stats& s) {
  return {{"median", s.median}, {"min", s.min}, {"max", s.max}};
}

int run(const BenchOptions& opt) {
  if (opt.rank != 0) return 0;  // one thread on one rank; the others have nothing to do
  // The text.
  std::vector<std::string> used;
  size_t text_bytes = 0;
  const std::vector<std::string> lines = licence_lines(&used, &text_bytes);
  PythonPeer py(
      kPythonScript, lines, [](const fs::path& dir) { return std::vector{dir.string()}; },
      {"RAYON_NUM_THREADS=1", "TOKENIZERS_PARALLELISM=false", "OMP_NUM_THREADS=1"},
      "the `tokenizers` package");
  const nlohmann::json& ready = py.ready();

  const int rounds = opt.quick ? 3 : 7;
  nlohmann::json by = nlohmann::json::object();
  double head_tessera = 0, head_hf = 0;
  for (auto it = ready.begin(); it != ready.end(); ++it) {
    const std::string name = it.key();
    auto tok = tokenizers::Tokenizer::from_file(it.value()["path"].get<std::string>());
    std::vector<std::vector<int32_t>> all(lines.size());
    size_t tokens = 0;
    for (size_t i = 0; i < lines.size(); ++i) {
      all[i] = tok->encode(lines[i]);
      tokens += all[i].size();
    }
    const bool ids_match = std::to_string(digest(all)) == it.value()["digest"].get<std::string>() &&
                           tokens == it.value()["tokens"].get<size_t>();
    // Per round: a freshly loaded tokenizer on each side (cold: word caches empty, as for text
    // never seen before; the headline), then the same encode again (warm: caches filled).
    std::vector<double> cold, warm, cold_batch, cold_loop, warm_batch, warm_loop;
    auto ours = [&](const tokenizers::Tokenizer& t) {
      const auto t0 = Clock::now();
      size_t n = 0;
      for (const auto& l : lines) n += t.encode(l).size();
      return static_cast<double>(n) / std::chrono::duration<double>(Clock::now() - t0).count();
    };
    auto theirs = [&](const char* mode, std::vector<double>& batch, std::vector<double>& loop) {
      py.send(name + " " + mode);
      const auto reply = py.receive();
      batch.push_back(static_cast<double>(tokens) / reply["batch_s"].get<double>());
      loop.push_back(static_cast<double>(tokens) / reply["loop_s"].get<double>());
    };
    const std::string path = it.value()["path"].get<std::string>();
    for (int r = 0; r < rounds; ++r) {
      auto fresh = tokenizers::Tokenizer::from_file(path);
      cold.push_back(ours(*fresh));
      theirs("cold", cold_batch, cold_loop);
      warm.push_back(ours(*fresh));
      theirs("warm", warm_batch, warm_loop);
    }
    const Stats c = stats(cold), w = stats(warm), cb = stats(cold_batch), cl = stats(cold_loop),
                wb = stats(warm_batch), wl = stats(warm_loop);
    const double hf_cold = std::max(cb.median, cl.median), hf_warm = std::max(wb.median, wl.median);
    by[name] = {{"cold",
                 {{"tessera", to_json(c)},
                  {"hf_encode_batch", to_json(cb)},
                  {"hf_encode_loop", to_json(cl)},
                  {"ratio_vs_best_hf", c.median / hf_cold}}},
                {"warm",
                 {{"tessera", to_json(w)},
                  {"hf_encode_batch", to_json(wb)},
                  {"hf_encode_loop", to_json(wl)},
                  {"ratio_vs_best_hf", w.median / hf_warm}}},
                {"tokens", tokens},
                {"ids_match", ids_match}};
    if (name == "llama3_bytelevel_bpe") {
      head_tessera = c.median;
      head_hf = hf_cold;
    }
    if (!opt.json) {
      for (const auto& [label, a, b, l, best] :
           {std::tuple{"cold", c, cb, cl, hf_cold}, std::tuple{"warm", w, wb, wl, hf_warm}}) {
        std::printf(
            "%-25s %s  tessera %6.2f M tok/s [%.2f-%.2f]  hf encode_batch %5.2f "
            "[%.2f-%.2f]  hf encode loop %5.2f [%.2f-%.2f]  x%.1f  ids %s\n",
            name.c_str(), label, a.median / 1e6, a.min / 1e6, a.max / 1e6, b.median / 1e6,
            b.min / 1e6, b.max / 1e6, l.median / 1e6, l.min / 1e6, l.max / 1e6, a.median / best,
            ids_match ? "match" : "DIFFER");
      }
    }
  }
  std::string text_desc = std::string(kLicenceDir) + "/{";
  for (size_t i = 0; i < used.size(); ++i) text_desc += (i ? "," : "") + used[i];
  text_desc +=
      "}: " + std::to_string(lines.size()) + " lines, " + std::to_string(text_bytes) + " bytes";
  nlohmann::json j = {{"encode_tok_s", {{"tessera", head_tessera}, {"hf", head_hf}}},
                      {"headline",
                       "llama3_bytelevel_bpe, cold (freshly loaded tokenizers), "
                       "medians; hf = the faster of encode_batch and an encode loop"},
                      {"by_tokenizer", by},
                      {"text", text_desc},
                      {"rounds", rounds},
                      {"threads", 1}};
  if (opt.json) {
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("text: %s; %d interleaved rounds, one thread each\n", text_desc.c_str(), rounds);
  }
  bool all_match = true;
  for (const auto& [k, v] : by.items()) all_match = all_match && v["ids_match"].get<bool>();
  return all_match ? 0 : 1;
}

}  // namespace

Benchmark tokenizers_benchmark() {
  return {"tokenizers",
          "Encode tokens/s on one thread, Tessera vs the Hugging Face tokenizers package", run};
}

}  // namespace tessera::bench
