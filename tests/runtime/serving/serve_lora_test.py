"""LoRA adapters behind `tessera serve` (real engine, real HTTP on 127.0.0.1, ephemeral port).

    serve_lora_test.py <tessera>

A random LLaMA + BPE tokenizer (transformers/tokenizers, serve_engine_test.make_llama; lm_head rows
kept only for printable-ASCII tokens, so that texts compare token by token) and two PEFT adapters
with random weights (peft, made here). One server:
    tessera serve --model llama=DIR --lora a=A --lora b=B --model solo=DIR:A
The `openai` client asks for "llama", "llama:a", "llama:b" at the same time (streamed, greedy):
each text and its tokens (logprobs, one per id) equal PEFT's greedy generate of that adapter
(transformers' for the base), and the three ran in one batch (streams live at once, engine steps
well below the sequential count); chats of the three at once (token bytes vs PEFT's ids); the
adapters again once the prompt's blocks are in the prefix cache (the base's blocks never serve an
adapter).
"solo" (NAME=PATH:ADAPTER, its own engine) equals PEFT's adapter a too. /v1/models lists the
adapters with their parent; an unknown adapter, a path, or an adapter's path as "model" is 404
in OpenAI's error JSON naming the model.
"""

import copy
import json
import os
import sys
import tempfile
import threading
import time

try:
    import httpx
    import openai
    import peft  # noqa: F401
    MISSING = None
except ImportError as e:
    MISSING = e

sys.path.insert(0, os.path.dirname(__file__))
failures = []
MAX_TOKENS = 128


def check(cond, what):
    print(("ok:   " if cond else "FAIL: ") + what, flush=True)
    if not cond:
        failures.append(what)


def make_adapter(base, d, seed, **kw):
    import torch
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(copy.deepcopy(base), LoraConfig(lora_dropout=0.0, **kw)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:  # B is zero at init: random A and B make the adapter matter
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    model.save_pretrained(d, safe_serialization=True)
    return model


def bytes_to_unicode():
    """GPT-2's byte -> character map (how byte-level BPE tokens spell their bytes)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def greedy_ids(model, ids):
    import torch
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=MAX_TOKENS, min_new_tokens=MAX_TOKENS,
                             do_sample=False, eos_token_id=None, pad_token_id=1)
    return out[0, ids.shape[1]:].tolist()


def main():
    if MISSING is not None:
        print(f"SKIPPED: {MISSING}")
        sys.exit(77)
    tessera = sys.argv[1]
    t0 = time.time()
    from serve_engine_test import make_llama, metric, start, stop_ok
    import serve_engine_test
    import torch
    tmp = tempfile.mkdtemp()
    d = os.path.join(tmp, "llama")
    base, fast = make_llama(d)
    # Only printable-ASCII tokens can win (the other rows of lm_head are 0, below the best of the
    # rest): then every token's text is its own and its bytes exact, so texts compare id by id
    # (random ids of a byte-level BPE would often show as U+FFFD, ambiguous).
    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}

    def token_bytes(i):
        return [byte_of[ch] for ch in fast.convert_ids_to_tokens(i)]

    with torch.no_grad():
        for i in range(base.lm_head.weight.shape[0]):
            if i in fast.all_special_ids or not all(32 <= b < 127 for b in token_bytes(i)):
                base.lm_head.weight[i] = 0
    base.save_pretrained(d, safe_serialization=True)
    a_dir, b_dir = os.path.join(tmp, "adapter_a"), os.path.join(tmp, "adapter_b")
    model_a = make_adapter(base, a_dir, 1, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    model_b = make_adapter(base, b_dir, 2, r=4, lora_alpha=8,
                           target_modules=["k_proj", "o_proj", "gate_proj", "down_proj"])
    # Longer than a KV block (16), so the prefix cache holds full blocks of it: blocks computed by
    # the base must not serve an adapter's request (the cache key carries the adapter).
    prompt = "Once upon a time there was a cat. The quick brown fox jumps over the lazy dog. " * 3
    ids = fast(prompt, return_tensors="pt").input_ids
    ref = {"llama": greedy_ids(base, ids), "llama:a": greedy_ids(model_a, ids),
           "llama:b": greedy_ids(model_b, ids)}
    # A chat: its logprobs carry each token's bytes.
    messages = [{"role": "user", "content": "Once upon a time"}]
    chat_ids = torch.tensor([fast.apply_chat_template(messages, add_generation_prompt=True)])
    chat_ref = {"llama": greedy_ids(base, chat_ids), "llama:a": greedy_ids(model_a, chat_ids),
                "llama:b": greedy_ids(model_b, chat_ids)}
    check(len({tuple(v) for v in ref.values()}) == 3,
          f"the adapters change PEFT's greedy output: {ref}")
    print(f"checkpoint and PEFT references: {time.time() - t0:.1f} s", flush=True)

    proc, port, _ = start([tessera, "serve", "--model", f"llama={d}", "--lora", f"a={a_dir}",
                           "--lora", f"b={b_dir}", "--model", f"solo={d}:{a_dir}",
                           "--max-loaded-models", "2", "--port", "0"])
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=120,
                           max_retries=0, http_client=httpx.Client(timeout=120))

    listed = {m.id: m for m in client.models.list().data}
    check(set(listed) == {"llama", "llama:a", "llama:b", "solo"},
          f"/v1/models lists the base, its adapters and solo: {sorted(listed)}")
    check(all(getattr(listed[n], "parent", None) == "llama" for n in ("llama:a", "llama:b")),
          "the adapters' parent is llama")
    for name in listed:  # models.retrieve (GET /v1/models/{id}, ':' as sent) gives the same
        got = client.models.retrieve(name).model_dump()
        check(got == listed[name].model_dump(), f"models.retrieve({name!r}): {got}")
    raw = json.dumps([m.model_dump() for m in listed.values()])
    check(a_dir not in raw and tmp not in raw, "/v1/models shows no path")

    # The three at once, streamed, greedy: each against its PEFT reference.
    barrier = threading.Barrier(3)

    def run(name, out):
        barrier.wait()
        chunks = client.completions.create(model=name, prompt=prompt, max_tokens=MAX_TOKENS,
                                           temperature=0, logprobs=1, stream=True,
                                           extra_body={"ignore_eos": True})
        text, toks, model, first, last = "", [], set(), None, None
        for c in chunks:
            model.add(c.model)
            if c.choices and c.choices[0].text:
                last = time.time()
                first = first or last
            if c.choices:
                text += c.choices[0].text
                if c.choices[0].logprobs and c.choices[0].logprobs.tokens:
                    toks += c.choices[0].logprobs.tokens
        out[name] = (text, toks, model, first, last)

    # Warm the engine (first-step costs) so that the three start together; the base's blocks of the
    # prompt are now in the prefix cache.
    client.completions.create(model="llama", prompt=prompt, max_tokens=1)
    steps0 = metric(port, "tessera_engine_steps_total", 'model="llama"')
    results = {}
    threads = [threading.Thread(target=run, args=(n, results)) for n in ref]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    steps = metric(port, "tessera_engine_steps_total", 'model="llama"') - steps0
    for name, want in ref.items():
        text, toks, model, _, _ = results.get(name, ("", [], set(), 0, 0))
        want_text = fast.decode(want, skip_special_tokens=True)
        check(text == want_text, f"{name}: text {text!r} == PEFT greedy {want_text!r}")
        # Token by token (logprobs' tokens: each id's own text), not only the joined text.
        want_toks = [fast.decode([i]) for i in want]
        check(toks == want_toks, f"{name}: tokens {toks} == PEFT greedy ids {want}")
        check(model == {name}, f"{name}: chunks name model {model}")
    # One engine runs all three, one step at a time, every running sequence in each step: streams
    # that are live at the same time were batched together. Sequentially they would take
    # 3 x MAX_TOKENS steps.
    firsts = [r[3] or 0 for r in results.values()]
    lasts = [r[4] or 0 for r in results.values()]
    check(len(results) == 3 and max(firsts) < min(lasts) and steps < 2 * MAX_TOKENS,
          f"base and adapters batched together: streams overlap "
          f"({(min(lasts) - max(firsts)) * 1e3:.0f} ms all three live), {steps:.0f} engine steps "
          f"for 3 x {MAX_TOKENS} tokens")
    # Chats (mixed too): each token's bytes against PEFT's ids.
    def chat(name, out):
        r = client.chat.completions.create(model=name, messages=messages, max_tokens=MAX_TOKENS,
                                           temperature=0, logprobs=True,
                                           extra_body={"ignore_eos": True})
        out[name] = [t.bytes for t in r.choices[0].logprobs.content]

    got = {}
    threads = [threading.Thread(target=chat, args=(n, got)) for n in chat_ref]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for name, want in chat_ref.items():
        exp = [token_bytes(i) for i in want]
        g = got.get(name) or []
        k = next((j for j in range(min(len(g), len(exp))) if g[j] != exp[j]), None)
        diff = "" if g == exp else f" (first difference at token {k}; {len(g)} vs {len(exp)})"
        check(g == exp, f"{name}: chat token bytes == PEFT greedy ids {want[:8]}...{diff}")
    # Again, now that every adapter's blocks of the prompt are cached too.
    for name in ("llama:b", "llama:a"):
        again = client.completions.create(model=name, prompt=prompt, max_tokens=MAX_TOKENS,
                                          temperature=0, extra_body={"ignore_eos": True})
        want_text = fast.decode(ref[name], skip_special_tokens=True)
        check(again.choices[0].text == want_text,
              f"{name} again (prefix cached): {again.choices[0].text!r} == PEFT")
    hits = metric(port, "tessera_prefix_cache_hit_rate", 'model="llama"')
    check(hits is not None and hits > 0, f"the prefix cache was used (hit rate {hits})")
    solo = client.completions.create(model="solo", prompt=prompt, max_tokens=MAX_TOKENS,
                                      temperature=0, extra_body={"ignore_eos": True})
    want_text = fast.decode(ref["llama:a"], skip_special_tokens=True)
    check(solo.choices[0].text == want_text,
          f"solo (NAME=PATH:ADAPTER) {solo.choices[0].text!r} == PEFT adapter a {want_text!r}")

    # Unknown adapters and paths: 404, OpenAI's error JSON naming the model, nothing opened.
    for bad in ("llama:nope", "llama:" + a_dir, a_dir, d, "solo:a", "../llama", "llama:a:b"):
        try:
            client.completions.create(model=bad, prompt=prompt, max_tokens=2)
            check(False, f"model {bad!r} was served")
        except openai.NotFoundError as e:
            err = e.body if isinstance(e.body, dict) else {}
            check(e.status_code == 404 and bad in err.get("message", "") and
                  err.get("param") == "model",
                  f"model {bad!r}: 404 {err}")
    st, _, body = serve_engine_test.http(port, "POST", "/v1/embeddings",
                                         {"model": "llama:a", "input": "x"})
    check(st == 400 and b"adapter" in body, f"embeddings on an adapter: {st} {body[:150]!r}")
    stop_ok(proc, "lora server")
    print(f"lora: {time.time() - t0:.1f} s, {len(failures)} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
