"""`tessera serve` on the real engine (no FakeEngine), real HTTP on 127.0.0.1 with ephemeral
ports, each server started and stopped here.

  serve_engine_test.py single <tessera>   the built-in tiny model (byte tokenizer) and a random
      LLaMA checkpoint + BPE tokenizer made here by transformers/tokenizers: the `openai` client
      and curl, completions and chat, streamed and not; streamed text == non-streamed text for the
      same seed; usage against independent references (UTF-8 bytes + <bos>; jinja2 ChatML; the HF
      tokenizer and apply_chat_template); greedy text == transformers' generate; a client that
      disconnects mid-stream gets its request aborted and its KV blocks back (/metrics); SIGTERM
      exits 0.
  serve_engine_test.py mpi <tessera> <mpiexec>   `mpirun -np 4 tessera serve --tp 2`: two
      replicas behind rank 0's router; a shared long prefix lands on one replica (router
      counters); under uneven load a new request goes to the idle replica; SIGTERM to rank 0
      stops the whole job with exit code 0.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

try:
    import httpx
    import jinja2
    import openai
    MISSING = None
except ImportError as e:  # the venv of outside references is missing (mpi mode needs none)
    MISSING = e

sys.path.insert(0, os.path.dirname(__file__))
from serving_procs import _procs, _wait_line, http, sse_events  # noqa: E402

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
failures = []


def check(cond, what):
    print(("ok:   " if cond else "FAIL: ") + what, flush=True)
    if not cond:
        failures.append(what)


def start(cmd, timeout=120):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    _procs.append(p)
    m = _wait_line(p, r"listening on http://127\.0\.0\.1:(\d+) \(.*pid (\d+)\)", timeout)
    return p, int(m.group(1)), int(m.group(2))


def metric(port, name, labels=""):
    """The sum of the samples of `name` whose labels contain `labels` (None: no sample)."""
    _, _, body = http(port, "GET", "/metrics")
    total, found = 0.0, False
    for line in body.decode().splitlines():
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$", line)
        if m and m.group(1) == name and labels in (m.group(2) or ""):
            total += float(m.group(3))
            found = True
    return total if found else None


def curl(port, body):
    out = subprocess.run(["curl", "-sS", "-N", "-H", "Content-Type: application/json",
                          f"http://127.0.0.1:{port}/v1/completions", "--data-binary",
                          json.dumps(body)], capture_output=True, timeout=120, check=True)
    return out.stdout


def generation_checks(port, model, prompt_len, chat_len, messages, tag):
    """openai + curl; streamed == non-streamed (seeded sampling); usage vs references."""
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=120,
                           max_retries=0, http_client=httpx.Client(timeout=120))
    prompt = "The quick brown fox jumps over the lazy dog"
    kw = dict(model=model, prompt=prompt, max_tokens=12, temperature=0.9, seed=1234,
              extra_body={"ignore_eos": True})
    full = client.completions.create(**kw)
    text = full.choices[0].text
    check(full.usage.prompt_tokens == prompt_len(prompt),
          f"{tag} completion usage.prompt_tokens {full.usage.prompt_tokens} == reference "
          f"{prompt_len(prompt)}")
    check(full.usage.completion_tokens == 12 and full.usage.total_tokens == prompt_len(prompt) + 12,
          f"{tag} completion usage.completion_tokens {full.usage.completion_tokens} == 12")
    check(full.choices[0].finish_reason == "length", f"{tag} finish_reason length")
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True},
                                            **kw))
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    check(streamed == text, f"{tag} openai streamed text {streamed!r} == non-streamed {text!r}")
    usage = [c.usage for c in chunks if c.usage is not None]
    check(len(usage) == 1 and usage[0].completion_tokens == 12 and
          usage[0].prompt_tokens == full.usage.prompt_tokens, f"{tag} streamed usage {usage}")
    check(sum(1 for c in chunks if c.choices) >= 2, f"{tag} several stream chunks")
    # curl, the same request, both ways.
    body = {"model": model, "prompt": prompt, "max_tokens": 12, "temperature": 0.9, "seed": 1234,
            "ignore_eos": True}
    j = json.loads(curl(port, body))
    check(j["choices"][0]["text"] == text, f"{tag} curl text == openai text")
    events = sse_events(curl(port, dict(body, stream=True)))
    check(events and events[-1] == "[DONE]", f"{tag} curl stream ends with [DONE]")
    ctext = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    check(ctext == text, f"{tag} curl streamed text {ctext!r} == {text!r}")
    # A different seed gives (almost surely) a different sample: the seed is honoured.
    other = client.completions.create(**dict(kw, seed=99)).choices[0].text
    check(other != text, f"{tag} seed 99 gives another sample ({other!r})")
    # Chat.
    ckw = dict(model=model, messages=messages, max_tokens=10, temperature=0.8, seed=7,
               extra_body={"ignore_eos": True})
    cfull = client.chat.completions.create(**ckw)
    check(cfull.usage.prompt_tokens == chat_len,
          f"{tag} chat usage.prompt_tokens {cfull.usage.prompt_tokens} == reference {chat_len}")
    check(cfull.usage.completion_tokens == 10, f"{tag} chat completion_tokens 10")
    cchunks = list(client.chat.completions.create(stream=True, **ckw))
    ctext = "".join(c.choices[0].delta.content or "" for c in cchunks if c.choices)
    check(ctext == cfull.choices[0].message.content,
          f"{tag} chat streamed {ctext!r} == non-streamed {cfull.choices[0].message.content!r}")
    return client


def disconnect_check(port, model, tag, max_tokens):
    """A stream cut by its client: the request is aborted and its KV blocks are freed."""
    before_abort = metric(port, "tessera_request_success_total", 'finish_reason="abort"') or 0
    gen_before = metric(port, "tessera_generation_tokens_total") or 0
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    body = json.dumps({"model": model, "prompt": "Once upon a time " * 8, "max_tokens": max_tokens,
                       "ignore_eos": True, "stream": True}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    got = b""
    while got.count(b"data: ") < 5:
        data = s.recv(65536)
        if not data:
            break
        got += data
    check(got.startswith(b"HTTP/1.1 200"), f"{tag} stream started: {got[:300]!r}")
    used = metric(port, "tessera_kv_cache_blocks_used")
    running = metric(port, "tessera_num_requests_running")
    check(used is not None and used > 0 and running == 1,
          f"{tag} mid-stream: {used} KV blocks used, {running} running")
    steps0 = metric(port, "tessera_engine_steps_total")
    s.close()
    t0 = time.time()
    while time.time() - t0 < 10:
        if metric(port, "tessera_kv_cache_blocks_used") == 0 and \
                metric(port, "tessera_num_requests_running") == 0:
            break
        time.sleep(0.005)
    dt = time.time() - t0
    steps = metric(port, "tessera_engine_steps_total") - steps0
    # One engine step of this stream: the mean inter-token latency so far.
    itl = metric(port, "tessera_inter_token_latency_seconds_sum") / \
        metric(port, "tessera_inter_token_latency_seconds_count")
    # In engine steps (robust on a loaded machine with slow steps): the step in flight at the
    # close, the one that takes the abort, and the steps between the last read before the close
    # and the close itself. With sub-millisecond steps the count instead measures how soon the
    # kernel runs the server's IO thread after the FIN: on a 2-core machine shared with other jobs
    # the scheduler may leave it waiting several ms (16 steps of 0.4 ms were seen in CI), so
    # there the bound is 25 ms of wall time, still far below a write-failure or end-of-request
    # detection (the request asks for 3,000 tokens; see "generation stopped early" below).
    check(metric(port, "tessera_kv_cache_blocks_used") == 0 and
          (steps <= 6 or dt < 0.025) and dt < 2 * itl + 0.25,
          f"{tag} blocks back in the pool {dt * 1000:.1f} ms after the close (mean step "
          f"{itl * 1000:.1f} ms; {steps:.0f} engine steps since the last read before the close)")
    aborted = (metric(port, "tessera_request_success_total", 'finish_reason="abort"') or 0)
    check(aborted == before_abort + 1, f"{tag} the request was aborted ({aborted})")
    gen = (metric(port, "tessera_generation_tokens_total") or 0) - gen_before
    check(gen < max_tokens, f"{tag} generation stopped early ({gen} tokens of {max_tokens})")
    return dt, steps


def stream_in_flight(port, max_tokens):
    """Starts a stream; returns a thread whose .result is the body once the stream ended."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    body = json.dumps({"model": "tiny", "prompt": "Far over the misty mountains",
                       "max_tokens": max_tokens, "ignore_eos": True, "stream": True}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
              b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    got = [b""]
    while b"data: " not in got[0]:
        got[0] += s.recv(65536)

    def read():
        while b"data: [DONE]" not in got[0]:
            data = s.recv(65536)
            if not data:
                break
            got[0] += data
        s.close()

    t = threading.Thread(target=read)
    t.start()
    t.got = got
    return t


def http_body(raw):
    """The body of a raw HTTP/1.1 response, de-chunked when it is chunked (a relay such as the
    router may split one SSE event over two chunks); a cut-off last chunk is kept as far as it
    came."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" not in head.lower():
        return rest
    body = b""
    while rest:
        size_line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            break
        body += rest[:size]
        rest = rest[size + 2:]
    return body


def check_drained(t, max_tokens, what):
    t.join(timeout=90)
    raw = t.got[0]
    events = [e for e in re.findall(rb"data: (.*?)\r?\n", http_body(raw))]
    texts = [json.loads(e)["choices"][0] for e in events if e != b"[DONE]"]
    n = sum(1 for c in texts if c["finish_reason"] == "length")
    check(events and events[-1] == b"[DONE]" and n == 1,
          f"{what}: the stream in flight at SIGTERM finished ({len(events)} events, "
          f"finish_reason length: {n})")


def check_shutdown_line(proc, streaming, what):
    """The server's stdout after the signal: its shutdown line counts the requests in flight
    (HttpServer::active_exchanges). With a stream running (2,000 tokens of the tiny model outlast
    the signal's delivery on any machine) that is at least 1. Without one it is 0 here, but a
    fresh-clone CI run once counted 1 right after disconnect_check on the llama server (exit 0
    all the same): most likely the last /metrics answer, whose bytes the client had read before
    the server's write completion ran and ended the exchange. The check allows that one."""
    rest = proc.stdout.read().decode(errors="replace")
    m = re.search(r"tessera serve: SIGTERM: finishing (\d+) requests? in flight \(at most 30 s\)",
                  rest)
    ok = m is not None and (int(m.group(1)) >= 1 if streaming else int(m.group(1)) <= 1)
    check(ok, f"{what}: the shutdown line counts {'>= 1' if streaming else '<= 1'} in flight: "
          f"{rest!r}")


def stop_ok(proc, what, port=None):
    t = stream_in_flight(port, 2000) if port else None
    proc.send_signal(signal.SIGTERM)
    if t:
        check_drained(t, 2000, what)
    try:
        rc = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        rc = "hang"
    check(rc == 0, f"{what}: SIGTERM exit code {rc}")
    if rc == 0:
        check_shutdown_line(proc, t is not None, what)


def make_llama(d):
    """A random LLaMA (transformers) with a byte-level BPE tokenizer trained here and a chat
    template; returns the transformers model and tokenizer."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["The quick brown fox jumps over the lazy dog.", "Once upon a time there was a cat.",
              "user assistant system hello world"] * 50
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.chat_template = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] "
                          "{{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}[assistant] {% endif %}")
    fast.save_pretrained(d)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, bos_token_id=0, eos_token_id=1,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(d, safe_serialization=True)
    return model, fast


def streamed_tool_calls(client, kw):
    """A streamed chat answer added up: its content, the calls' names and arguments by index, the
    last finish_reason."""
    content, names, args, reason = "", {}, {}, None
    for ch in client.chat.completions.create(stream=True, **kw):
        if not ch.choices:
            continue
        dl = ch.choices[0].delta
        content += dl.content or ""
        for t in dl.tool_calls or []:
            names[t.index] = names.get(t.index, "") + (t.function.name or "")
            args[t.index] = args.get(t.index, "") + (t.function.arguments or "")
        reason = ch.choices[0].finish_reason
    return content, names, args, reason


def tool_format_checks(tessera, d, messages, tools):
    """--tool-call-parser llama3_json and mistral on the llama folder: an answer forced by
    guided_choice to each format's calls comes back as the openai client's tool_calls (streamed
    too), text stays text; with mistral the answer's special tokens stay in its text ([TOOL_CALLS]
    is one), except the end of sequence that ends it, as vLLM."""
    forms = {
        "llama3_json": ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; '
                        '{"name": "now", "parameters": {}}', None,
                        lambda i: re.fullmatch(r"chatcmpl-tool-[0-9a-f]{32}", i)),
        "mistral": ('Let me see.[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": '
                    '"Paris"}}, {"name": "now", "arguments": {}}]', "Let me see.",
                    lambda i: re.fullmatch(r"[A-Za-z0-9]{9}", i)),
    }
    for parser, (call_text, want_content, good_id) in forms.items():
        proc, port, _ = start([tessera, "serve", "--model", d, "--port", "0",
                               "--enable-auto-tool-choice", "--tool-call-parser", parser])
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x",
                               max_retries=0, http_client=httpx.Client(timeout=120))
        tkw = dict(model="llama", messages=messages, max_tokens=300, temperature=0, tools=tools,
                   extra_body={"guided_choice": [call_text]})
        tc = client.chat.completions.create(**tkw).choices[0]
        calls = tc.message.tool_calls or []
        check([c.function.name for c in calls] == ["get_weather", "now"] and
              [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris"}, {}] and
              all(good_id(c.id) for c in calls) and
              tc.message.content == want_content and tc.finish_reason == "tool_calls",
              f"{parser} tool calls parsed: {calls} content {tc.message.content!r} "
              f"({tc.finish_reason})")
        content, names, args, reason = streamed_tool_calls(client, tkw)
        check(content == (want_content or "") and names == {0: "get_weather", 1: "now"} and
              json.loads(args.get(0, "null")) == {"city": "Paris"} and reason == "tool_calls",
              f"{parser} streamed tool calls: content {content!r}, {names}, {args} ({reason})")
        text = client.chat.completions.create(
            **dict(tkw, extra_body={"guided_choice": ["It is sunny {in Paris}."]})).choices[0]
        check(text.message.content == "It is sunny {in Paris}." and not text.message.tool_calls
              and text.finish_reason == "stop", f"{parser}: text stays text: {text.message}")
        if parser == "mistral":
            # Special tokens stay in the text of answers read for calls (<s> is id 0), not in
            # others; the end of sequence (</s>, id 1) that ends an answer is not in its text, one
            # that does not end it (ignore_eos) is.
            def answer(ids, n, with_tools=True, **extra):
                kw = dict(model="llama", messages=messages, max_tokens=n, temperature=0,
                          extra_body=dict(allowed_token_ids=ids, **extra))
                if with_tools:
                    kw["tools"] = tools
                return client.chat.completions.create(**kw).choices[0]
            got = [answer([0], 3), answer([0], 3, with_tools=False), answer([1], 3),
                   answer([1], 2, ignore_eos=True)]
            check([(c.message.content or "", c.finish_reason) for c in got] ==
                  [("<s><s><s>", "length"), ("", "length"), ("", "stop"),
                   ("</s></s>", "length")],
                  f"mistral: special tokens kept, the ending </s> dropped: "
                  f"{[(c.message.content, c.finish_reason) for c in got]}")
        stop_ok(proc, f"llama server, --tool-call-parser {parser}")


def run_single(tessera):
    global T0
    T0 = time.time()
    tmp = tempfile.mkdtemp()
    env_home = os.path.join(tmp, "home")
    os.makedirs(env_home)
    # --- tiny: the byte tokenizer, ChatML chats.
    proc, port, _ = start([tessera, "serve", "--model", "tiny", "--port", "0"])
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    rendered = jinja2.Template(CHATML).render(messages=messages, add_generation_prompt=True)
    # The chat's prompt is the rendered text without added specials (the template has them).
    client = generation_checks(port, "tiny", lambda p: 1 + len(p.encode()),
                               len(rendered.encode()), messages, "tiny")
    # continue_final_message (vLLM): the prompt ends inside the final (assistant) message, after
    # its content: jinja2's rendering without the generation prompt, cut there.
    prefill = messages + [{"role": "assistant", "content": "Hello th"}]
    whole = jinja2.Template(CHATML).render(messages=prefill, add_generation_prompt=False)
    want = whole[:whole.rindex("Hello th") + len("Hello th")]
    cont = client.chat.completions.create(
        model="tiny", messages=prefill, max_tokens=4, temperature=0,
        extra_body={"continue_final_message": True, "add_generation_prompt": False})
    check(cont.usage.prompt_tokens == len(want.encode()) and want.endswith("Hello th"),
          f"continue_final_message: prompt {cont.usage.prompt_tokens} tokens == "
          f"{len(want.encode())} (the rendering cut after the final content)")
    # /tokenize builds the same chat prompt (it ignored continue_final_message, tools and
    # chat_template_kwargs).
    import urllib.request
    treq = urllib.request.Request(
        f"http://127.0.0.1:{port}/tokenize", headers={"Content-Type": "application/json"},
        data=json.dumps({"model": "tiny", "messages": prefill, "continue_final_message": True,
                         "add_generation_prompt": False}).encode())
    with urllib.request.urlopen(treq, timeout=30) as r:
        count = json.loads(r.read())["count"]
    check(count == cont.usage.prompt_tokens,
          f"/tokenize count {count} == the chat's prompt_tokens {cont.usage.prompt_tokens}")
    try:
        client.chat.completions.create(model="tiny", messages=prefill, max_tokens=2,
                                       extra_body={"continue_final_message": True})
        check(False, "continue_final_message with add_generation_prompt accepted")
    except openai.BadRequestError as e:
        check("continue_final_message" in str(e), f"400 names continue_final_message: {e}")
    # vLLM fields that would change the answer and have no implementation: a 400 naming each
    # (they were accepted and ignored).
    for field, value in [("use_beam_search", True), ("length_penalty", 0.5),
                         ("allowed_token_ids", []), ("bad_words", [""]),
                         ("prompt_logprobs", 21), ("return_tokens_as_token_ids", 1),
                         ("cache_salt", "")]:
        try:
            client.completions.create(model="tiny", prompt="x", max_tokens=2,
                                      extra_body={field: value})
            check(False, f"{field}={value!r} accepted")
        except openai.BadRequestError as e:
            check(field in str(e), f"400 names {field}: {e}")
    try:
        client.chat.completions.create(model="tiny", messages=messages, max_tokens=2,
                                       extra_body={"echo": True})
        check(False, "chat echo accepted")
    except openai.BadRequestError as e:
        check("echo" in str(e), f"400 names echo: {e}")
    try:
        client.chat.completions.create(model="tiny", messages=messages, max_tokens=2,
                                       extra_body={"documents": "x"})
        check(False, "documents 'x' accepted")
    except openai.BadRequestError as e:
        check("documents" in str(e), f"400 names documents: {e}")
    # allowed_token_ids while sampling: the byte model's ids are bytes, so the text shows which
    # ids were drawn. Temperature 1, 40 tokens: only a, b and c, and more than one of them.
    sampled = client.completions.create(model="tiny", prompt="x", max_tokens=40, temperature=1.0,
                                        extra_body={"ignore_eos": True,
                                                    "allowed_token_ids": [97, 98, 99]})
    text = sampled.choices[0].text
    check(len(text) == 40 and set(text) <= set("abc") and len(set(text)) > 1,
          f"sampled with allowed_token_ids [97, 98, 99] ('a', 'b', 'c'): {text!r}")
    # guided_choice on the byte model, sampled: each text is one of the choices.
    got = client.completions.create(model="tiny", prompt="x", max_tokens=12, temperature=1.0, n=6,
                                    extra_body={"guided_choice": ["yes", "no", "yesterday"]})
    texts = [c.text for c in got.choices]
    check(all(t in ("yes", "no", "yesterday") for t in texts),
          f"tiny guided_choice, 6 samples: {texts}")
    dt, steps = disconnect_check(port, "tiny", "tiny", 3000)
    stop_ok(proc, "tiny server", port)
    print(f"tiny: {time.time() - T0:.1f} s", flush=True)

    # --- a random LLaMA with a real tokenizer.json and a chat template.
    d = os.path.join(tmp, "llama")
    model, fast = make_llama(d)
    print(f"checkpoint made: {time.time() - T0:.1f} s", flush=True)
    proc, port, _ = start([tessera, "serve", "--model", d, "--port", "0",
                           "--enable-auto-tool-choice", "--tool-call-parser", "hermes"])
    prompt_len = lambda p: len(fast(p).input_ids)  # noqa: E731
    chat_ids = fast.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    client = generation_checks(port, "llama", prompt_len, len(chat_ids), messages, "llama")
    # Greedy text against transformers' generate on the same checkpoint.
    import torch
    prompt = "Once upon a time"
    ids = fast(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=None,
                             pad_token_id=1)
    ref = fast.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    got = client.completions.create(model="llama", prompt=prompt, max_tokens=10, temperature=0,
                                    extra_body={"ignore_eos": True}).choices[0].text
    check(got == ref, f"llama greedy text {got!r} == transformers {ref!r}")
    # logit_bias against transformers' sequence_bias (the same bias added to one token's logit
    # at every step): the first greedy token banned, another one pushed up.
    first = int(out[0, ids.shape[1]])
    pushed = int(out[0, ids.shape[1] + 2]) if int(out[0, ids.shape[1] + 2]) != first else 40
    with torch.no_grad():
        out_b = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=None,
                               pad_token_id=1, sequence_bias={(first,): -100.0, (pushed,): 0.5})
    ref_b = fast.decode(out_b[0, ids.shape[1]:], skip_special_tokens=True)
    got_b = client.completions.create(model="llama", prompt=prompt, max_tokens=10, temperature=0,
                                      logit_bias={str(first): -100, str(pushed): 0.5},
                                      extra_body={"ignore_eos": True}).choices[0].text
    check(got_b == ref_b and ref_b != ref,
          f"llama greedy text with logit_bias {got_b!r} == transformers {ref_b!r} (!= {ref!r})")
    # allowed_token_ids (vLLM) against transformers' prefix_allowed_tokens_fn (the same mask at
    # every step): 40 ids without the unconstrained first token.
    allowed = [t for t in range(3, model.config.vocab_size, 7) if t != first][:40]
    with torch.no_grad():
        out_a = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=None,
                               pad_token_id=1, prefix_allowed_tokens_fn=lambda b, x: allowed)
    ref_ids = [int(t) for t in out_a[0, ids.shape[1]:]]
    ref_a = fast.decode(ref_ids, skip_special_tokens=True)
    got_a = client.completions.create(model="llama", prompt=prompt, max_tokens=10, temperature=0,
                                      logprobs=1, extra_body={"ignore_eos": True,
                                                              "allowed_token_ids": allowed})
    check(got_a.choices[0].text == ref_a and all(t in allowed for t in ref_ids) and ref_a != ref,
          f"llama greedy text with allowed_token_ids {got_a.choices[0].text!r} == transformers "
          f"{ref_a!r} (!= {ref!r})")
    # bad_words (vLLM) against transformers' bad_words_ids, the words tokenized as vLLM does (the
    # word without leading whitespace, and " " + it when that is a different first token and as
    # many tokens). A word that is one token of the unconstrained greedy text is banned there, so
    # the text changes; a two-token word rides along.
    def vllm_bad_ids(word):
        bare = word.lstrip()
        ids = [fast.encode(bare, add_special_tokens=False)]
        spaced = fast.encode(" " + bare, add_special_tokens=False)
        if spaced[0] != ids[-1][0] and len(spaced) == len(ids[-1]):
            ids.append(spaced)
        return ids
    gen = [int(t) for t in out[0, ids.shape[1]:]]
    one = next((fast.decode([t]) for t in gen if fast.decode([t]).strip() and
                fast.encode(fast.decode([t]).lstrip(), add_special_tokens=False) == [t]), None)
    two = next((fast.decode(gen[i:i + 2]) for i in range(len(gen) - 1)
                if fast.decode(gen[i:i + 2]).strip() and
                len(fast.encode(fast.decode(gen[i:i + 2]).lstrip(),
                                add_special_tokens=False)) == 2), None)
    check(one is not None and two is not None,
          f"greedy text has a one-token word {one!r} and a two-token word {two!r}")
    words = [one, two]
    bad_ids = [x for w in words for x in vllm_bad_ids(w)]
    with torch.no_grad():
        out_w = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=None,
                               pad_token_id=1, bad_words_ids=bad_ids)
    ref_w = fast.decode(out_w[0, ids.shape[1]:], skip_special_tokens=True)
    got_w = client.completions.create(model="llama", prompt=prompt, max_tokens=10, temperature=0,
                                      extra_body={"ignore_eos": True, "bad_words": words})
    check(got_w.choices[0].text == ref_w and ref_w != ref,
          f"llama greedy text with bad_words {words!r} (ids {bad_ids}) "
          f"{got_w.choices[0].text!r} == transformers {ref_w!r} (!= {ref!r})")
    # return_tokens_as_token_ids (vLLM): logprobs name tokens "token_id:<id>"; transformers'
    # tokenizer decodes those ids to the text, and the logprobs are those of the same request
    # without the flag.
    lkw = dict(model="llama", prompt=prompt, max_tokens=10, temperature=0, logprobs=2)
    plain = client.completions.create(**lkw, extra_body={"ignore_eos": True}).choices[0]
    as_ids = client.completions.create(**lkw, extra_body={
        "ignore_eos": True, "return_tokens_as_token_ids": True}).choices[0]
    named = as_ids.logprobs.tokens + [k for d in as_ids.logprobs.top_logprobs for k in d]
    well = all(re.fullmatch(r"token_id:\d+", t) for t in named)
    got_ids = [int(t.split(":")[1]) for t in as_ids.logprobs.tokens] if well else []
    check(well and len(got_ids) == 10 and
          fast.decode(got_ids, skip_special_tokens=True) == plain.text == as_ids.text and
          as_ids.logprobs.token_logprobs == plain.logprobs.token_logprobs and
          as_ids.logprobs.text_offset == plain.logprobs.text_offset,
          f"return_tokens_as_token_ids: {as_ids.logprobs.tokens[:4]}... decode to {plain.text!r}")
    chat_ids = client.chat.completions.create(
        model="llama", messages=messages, max_tokens=6, temperature=0, logprobs=True,
        top_logprobs=2, extra_body={"ignore_eos": True, "return_tokens_as_token_ids": True})
    content = chat_ids.choices[0].logprobs.content
    well = all(re.fullmatch(r"token_id:\d+", x.token) and bytes(x.bytes) == x.token.encode() and
               all(re.fullmatch(r"token_id:\d+", y.token) for y in x.top_logprobs)
               for x in content)
    cids = [int(x.token.split(":")[1]) for x in content] if well else []
    check(well and len(cids) == 6 and
          fast.decode(cids, skip_special_tokens=True) == chat_ids.choices[0].message.content,
          f"chat return_tokens_as_token_ids: {[x.token for x in content]}")
    # Prompt scores against transformers' log_softmax over the same ids. (1) echo, logprobs=2 and
    # max_tokens=0 (lm-evaluation-harness' scoring request): the prompt alone, its tokens'
    # logprobs (the first null), usage without completion tokens.
    def hf_scores(id_list):
        with torch.no_grad():
            lsm = torch.log_softmax(model(torch.tensor([id_list])).logits[0].double(), -1)
        return [None] + [lsm[p, id_list[p + 1]].item() for p in range(len(id_list) - 1)], lsm
    score_prompt = "Once upon a time there was a little dragon"
    sids = fast(score_prompt).input_ids
    want, lsm = hf_scores(sids)
    ev = client.completions.create(model="llama", prompt=score_prompt, max_tokens=0, echo=True,
                                   logprobs=2)
    c0 = ev.choices[0]
    lp = c0.logprobs
    gap = max((abs(a - b) for a, b in zip(lp.token_logprobs[1:], want[1:])), default=1.0)
    check(c0.text == fast.decode(sids, skip_special_tokens=True) and
          len(lp.tokens) == len(sids) and lp.token_logprobs[0] is None and
          lp.top_logprobs[0] is None and gap <= 2e-4 and ev.usage.completion_tokens == 0 and
          all(len(d) >= 2 for d in lp.top_logprobs[1:]),
          f"echo + logprobs + max_tokens 0: {len(lp.tokens)} prompt tokens scored, largest gap "
          f"to transformers {gap:.2e}, completion_tokens {ev.usage.completion_tokens}")
    # (2) prompt_logprobs=3 (vLLM's field) beside generation: each entry holds the prompt token
    # (its logprob and rank transformers') and the 3 most likely tokens.
    pv = client.completions.create(model="llama", prompt=score_prompt, max_tokens=3, temperature=0,
                                   extra_body={"prompt_logprobs": 3, "ignore_eos": True})
    plp = (pv.choices[0].model_extra or {}).get("prompt_logprobs") or []
    ok = len(plp) == len(sids) and plp[0] is None and len(pv.choices[0].text) > 0
    worst = 0.0
    for p in range(1, len(plp) if ok else 0):
        entry = plp[p].get(str(sids[p]))
        ok = ok and entry is not None and len(plp[p]) >= 3
        if not ok:
            break
        worst = max(worst, abs(entry["logprob"] - want[p]))
        rank = 1 + int((lsm[p - 1] > want[p] + 2e-4).sum())
        ok = ok and rank <= entry["rank"] <= int((lsm[p - 1] > want[p] - 2e-4).sum())
    check(ok and worst <= 2e-4, f"prompt_logprobs=3: {len(plp)} entries, largest gap {worst:.2e}")
    # (3) chat: the rendered prompt's scores once, at the top of the response.
    cids = fast.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    cwant, _ = hf_scores(cids)
    cr = client.chat.completions.create(model="llama", messages=messages, max_tokens=2,
                                        extra_body={"prompt_logprobs": 0})
    cplp = (cr.model_extra or {}).get("prompt_logprobs") or []
    cgap = max((abs(cplp[p][str(cids[p])]["logprob"] - cwant[p]) for p in range(1, len(cplp))),
               default=1.0)
    check(len(cplp) == len(cids) and cplp[0] is None and cgap <= 2e-4,
          f"chat prompt_logprobs: {len(cplp)} entries for {len(cids)} ids, gap {cgap:.2e}")
    # (4) streamed echo + logprobs: the prompt's scored tokens arrive first, then the generated.
    chunks = list(client.completions.create(model="llama", prompt=score_prompt, max_tokens=3,
                                            echo=True, logprobs=1, stream=True, temperature=0,
                                            extra_body={"ignore_eos": True}))
    stoks = [t for c in chunks if c.choices and c.choices[0].logprobs
             for t in c.choices[0].logprobs.token_logprobs]
    check(len(stoks) == len(sids) + 3 and stoks[0] is None and
          max(abs(a - b) for a, b in zip(stoks[1:len(sids)], want[1:])) <= 2e-4,
          f"streamed echo + logprobs: {len(stoks)} scored tokens (prompt {len(sids)} + 3)")
    # guided_choice (vLLM) against transformers' generate under prefix_allowed_tokens_fn, with the
    # same rule written here: a token is allowed when the text so far plus its text is a prefix of
    # a choice; the end of sequence when the text is a choice. Token texts from transformers'
    # tokenizer (each token decoded after "a", the "a" cut off).
    choices = ["the dragon slept", "the dragon", "a knight rode by", "rain"]
    anchor = fast.encode("a", add_special_tokens=False)
    piece = [fast.decode(anchor + [t], skip_special_tokens=True)[1:]
             for t in range(model.config.vocab_size)]
    eos = fast.eos_token_id

    def choice_tokens(batch_id, sofar):
        text = "".join(piece[t] for t in sofar[ids.shape[1]:].tolist())
        ok = [t for t in range(len(piece)) if piece[t] and
              any(c.startswith(text + piece[t]) for c in choices)]
        return ok + ([eos] if text in choices else []) or [eos]
    with torch.no_grad():
        out_g = model.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=eos,
                               pad_token_id=1, prefix_allowed_tokens_fn=choice_tokens)
    ref_g = fast.decode(out_g[0, ids.shape[1]:], skip_special_tokens=True)
    got_g = client.completions.create(model="llama", prompt=prompt, max_tokens=24, temperature=0,
                                      extra_body={"guided_choice": choices})
    check(got_g.choices[0].text == ref_g and ref_g in choices and
          got_g.choices[0].finish_reason == "stop",
          f"llama greedy guided_choice {got_g.choices[0].text!r} == transformers {ref_g!r} "
          f"({got_g.choices[0].finish_reason})")
    # Sampled, in a chat, through structured_outputs: every answer one of the choices.
    got_c = client.chat.completions.create(model="llama", messages=messages, max_tokens=24,
                                           temperature=1.0, n=8, seed=3,
                                           extra_body={"structured_outputs": {"choice": choices}})
    answers = [c.message.content for c in got_c.choices]
    check(all(a in choices for a in answers) and len(set(answers)) > 1,
          f"8 sampled chat answers under structured_outputs.choice: {answers}")
    # JSON mode (response_format json_object): answers that end are one JSON object (json.loads).
    # A random model left alone writes long strings, so logit_bias favours the bytes that close
    # strings and containers and start keys and values.
    favoured = [t for t in range(model.config.vocab_size)
                if piece[t] in ('"', '}', ']', ':', ',', '[', '{', '1', 't')]
    jkw = dict(model="llama", messages=messages, max_tokens=200, temperature=1.0, n=6, seed=11,
               response_format={"type": "json_object"},
               logit_bias={str(t): 3 for t in favoured})
    jr = client.chat.completions.create(**jkw)
    ended = [c.message.content for c in jr.choices if c.finish_reason == "stop"]
    parsed = [json.loads(t) for t in ended]
    check(len(ended) >= 3 and all(isinstance(x, dict) for x in parsed),
          f"json_object: {len(ended)} of 6 sampled answers ended, each a JSON object: "
          f"{[t[:60] for t in ended]}")
    for c in jr.choices:
        if c.finish_reason == "length":  # cut short: still the start of an object
            check(c.message.content.lstrip().startswith("{"), f"cut answer {c.message.content[:60]!r}")
    # Tool calls (--tool-call-parser hermes): the answer forced by guided_choice to a Hermes call
    # after some text comes back as the openai client's tool_calls, its arguments the JSON, the
    # text before it the content, finish_reason "tool_calls"; streamed, the deltas add up to the
    # same; with tool_choice "none" (or without tools) the answer stays text.
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    call_text = ('Checking.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
                 '\n</tool_call>')
    tkw = dict(model="llama", messages=messages, max_tokens=200, temperature=0, tools=tools,
               extra_body={"guided_choice": [call_text]})
    tc = client.chat.completions.create(**tkw).choices[0]
    calls = tc.message.tool_calls or []
    check(len(calls) == 1 and calls[0].function.name == "get_weather" and
          json.loads(calls[0].function.arguments) == {"city": "Paris"} and
          calls[0].type == "function" and calls[0].id.startswith("chatcmpl-tool-") and
          tc.message.content == "Checking." and tc.finish_reason == "tool_calls",
          f"hermes tool call parsed: {calls} content {tc.message.content!r} ({tc.finish_reason})")
    content, names, args, reason = streamed_tool_calls(client, tkw)
    check(content == "Checking." and names == {0: "get_weather"} and
          json.loads(args.get(0, "null")) == {"city": "Paris"} and reason == "tool_calls",
          f"streamed tool call: content {content!r}, {names}, {args} ({reason})")
    plain = client.chat.completions.create(**dict(tkw, tool_choice="none")).choices[0]
    check(plain.message.content == call_text and not plain.message.tool_calls and
          plain.finish_reason == "stop", f"tool_choice none: text {plain.message.content!r}")
    for extra, what in [({"allowed_token_ids": [3, 99999999]}, "99999999"),
                        ({"guided_choice": []}, "non-empty strings"),
                        ({"guided_json": {"type": "object"}}, "not supported"),
                        ({"structured_outputs": {"regex": "a+"}}, "only 'choice' and 'json_object'"),
                        ({"prompt_logprobs": 1, "stream": True}, "stream"),
                        ({"allowed_token_ids": [fast.eos_token_id], "min_tokens": 2}, "min_tokens"),
                        ({"bad_words": ["ok", "  "]}, "more than whitespace")]:
        try:
            client.completions.create(model="llama", prompt=prompt, max_tokens=4,
                                      extra_body=extra)
            check(False, f"{extra} accepted")
        except openai.BadRequestError as e:
            field = next(k for k in extra if k != "stream")
            check(field in str(e) and what in str(e), f"400 names {field} and {what}: {e}")
    try:
        client.completions.create(model="llama", prompt=prompt, max_tokens=2,
                                  logit_bias={"99999999": 1})
        check(False, "a logit_bias id past the vocabulary accepted")
    except openai.BadRequestError as e:
        check("logit_bias" in str(e) and "99999999" in str(e), f"400 names logit_bias: {e}")
    # truncate_prompt_tokens (vLLM): the last k tokens of the prompt, against transformers'
    # greedy output from those k ids; echo shows the prompt the model saw.
    long_prompt = "Once upon a time there was a little dragon who lived in a cave by the sea"
    long_ids = fast(long_prompt, return_tensors="pt").input_ids
    k = 5
    with torch.no_grad():
        out_t = model.generate(long_ids[:, -k:], max_new_tokens=6, do_sample=False,
                               eos_token_id=None, pad_token_id=1)
    ref_t = fast.decode(out_t[0, k:], skip_special_tokens=True)
    cut = client.completions.create(model="llama", prompt=long_prompt, max_tokens=6,
                                    temperature=0, echo=True,
                                    extra_body={"ignore_eos": True, "truncate_prompt_tokens": k})
    seen = fast.decode(long_ids[0, -k:])
    check(cut.usage.prompt_tokens == k and cut.choices[0].text == seen + ref_t,
          f"truncate_prompt_tokens {k}: {cut.usage.prompt_tokens} prompt tokens, text "
          f"{cut.choices[0].text!r} == {seen + ref_t!r} (of {long_ids.shape[1]} tokens)")
    for bad in [0, -2, 10**6]:
        try:
            client.completions.create(model="llama", prompt=long_prompt, max_tokens=2,
                                      extra_body={"truncate_prompt_tokens": bad})
            check(False, f"truncate_prompt_tokens {bad} accepted")
        except openai.BadRequestError as e:
            check("truncate_prompt_tokens" in str(e), f"400 names truncate_prompt_tokens: {e}")
    # cache_salt (vLLM): prefix-cache hits only between requests of one salt.
    shared = " ".join(["the quick brown fox jumps over the lazy dog"] * 8)

    def cached(salt):
        extra = {"cache_salt": salt} if salt else {}
        u = client.completions.create(model="llama", prompt=shared, max_tokens=1,
                                      extra_body=extra).usage
        d = getattr(u, "prompt_tokens_details", None)
        return (d.cached_tokens if d else 0) or 0
    hits = [cached(None), cached(None), cached("tenant-a"), cached("tenant-a"),
            cached("tenant-b"), cached(None)]
    check(hits[0] == 0 and hits[1] > 0 and hits[2] == 0 and hits[3] > 0 and hits[4] == 0 and
          hits[5] > 0, f"cache_salt: cached tokens without / a / a / b / without: {hits}")
    disconnect_check(port, "llama", "llama", 400)
    stop_ok(proc, "llama server")
    # generation_config.json's sampling fields are the defaults of requests that leave them out
    # (vLLM's --generation-config auto): temperature 0 (greedy) and max_new_tokens 5 here, against
    # transformers' greedy tokens; --generation-config none keeps the API's defaults.
    import shutil
    d_gen = os.path.join(tmp, "llama_gen")
    shutil.copytree(d, d_gen)
    with open(os.path.join(d_gen, "generation_config.json"), "w") as f:
        json.dump({"temperature": 0.0, "top_p": 0.5, "max_new_tokens": 5}, f)
    ref5 = fast.decode(out[0, ids.shape[1]:ids.shape[1] + 5], skip_special_tokens=True)
    texts = {}
    for mode in ["auto", "none"]:
        proc, port, _ = start([tessera, "serve", "--model", f"llama={d_gen}", "--generation-config",
                               mode, "--port", "0"])
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0,
                          http_client=httpx.Client())
        if mode == "auto":
            r = c.completions.create(model="llama", prompt=prompt, extra_body={"ignore_eos": True})
            check(r.usage.completion_tokens == 5 and r.choices[0].text == ref5,
                  f"generation_config defaults: {r.usage.completion_tokens} tokens "
                  f"{r.choices[0].text!r} == transformers' greedy {ref5!r}")
            texts[mode] = c.completions.create(model="llama", prompt=prompt, max_tokens=8,
                                               temperature=1.0, top_p=1.0, seed=3,
                                               extra_body={"ignore_eos": True}).choices[0].text
        else:
            texts[mode] = c.completions.create(model="llama", prompt=prompt, max_tokens=8, seed=3,
                                               extra_body={"ignore_eos": True}).choices[0].text
        stop_ok(proc, f"llama server, --generation-config {mode}")
    check(texts["auto"] == texts["none"],
          f"fields the request gives win over the defaults; none = the API's defaults: {texts}")
    # --chat-template FILE (vLLM's flag) in place of the folder's: the ids of a chat are those of
    # transformers' apply_chat_template with that template (the folder's bos_token in it).
    tpl = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>"
           "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    tpl_file = os.path.join(tmp, "template.jinja")
    with open(tpl_file, "w") as f:
        f.write(tpl)
    proc, port, _ = start([tessera, "serve", "--model", d, "--chat-template", tpl_file,
                           "--port", "0"])
    want_ids = fast.apply_chat_template(messages, chat_template=tpl, add_generation_prompt=True,
                                        tokenize=True)
    status, _, body = http(port, "POST", "/tokenize", {"model": "llama", "messages": messages})
    got_ids = json.loads(body)["tokens"] if status == 200 else body
    chat = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0,
                         http_client=httpx.Client()).chat.completions.create(
        model="llama", messages=messages, max_tokens=2)
    check(got_ids == want_ids and chat.usage.prompt_tokens == len(want_ids) and
          want_ids != chat_ids,
          f"--chat-template FILE: ids {got_ids} == transformers' {want_ids}, chat prompt_tokens "
          f"{chat.usage.prompt_tokens}")
    stop_ok(proc, "llama server with --chat-template")
    bad = subprocess.run([tessera, "serve", "--model", d, "--chat-template", "{% if x %}",
                          "--port", "0"], capture_output=True, text=True, timeout=60)
    check(bad.returncode != 0 and "--chat-template" in bad.stderr,
          f"a template that does not parse: exit {bad.returncode}, {bad.stderr.strip()!r}")
    tool_format_checks(tessera, d, messages, tools)


def run_mpi(tessera, mpiexec):
    cmd = [mpiexec, "-np", "4", tessera, "serve", "--model", "tiny", "--tp", "2", "--port", "0",
           "--balance-abs-threshold", "2", "--balance-rel-threshold", "1.5",
           "--kv-cache-memory", "16M"]
    proc, port, rank0 = start(cmd, timeout=180)
    workers = lambda: {m.group(1): float(m.group(2)) for m in re.finditer(  # noqa: E731
        r'tessera_router_requests_total\{worker="([^"]+)"\} (\S+)',
        http(port, "GET", "/metrics")[2].decode())}
    deadline = time.time() + 30
    while time.time() < deadline and http(port, "GET", "/health")[0] != 200:
        time.sleep(0.2)
    # A long shared prefix: every request after the first goes where the prefix is.
    prefix = "In a hole in the ground there lived a hobbit. Not a nasty, dirty, wet hole. " * 2
    for i in range(4):
        st, _, body = http(port, "POST", "/v1/completions",
                           {"model": "tiny", "prompt": prefix + str(i), "max_tokens": 4})
        check(st == 200, f"dp request {i}: {st} {body[:200]!r}")
    w = workers()
    cache = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'tessera_router_cache_routed_total\{worker="([^"]+)"\} (\S+)',
        http(port, "GET", "/metrics")[2].decode())}
    check(len(w) == 1 and list(w.values())[0] == 4,
          f"4 requests sharing a prefix on one replica: {w}")
    check(sum(cache.values()) >= 3, f"routed by cache: {cache}")
    busy = list(w)[0]
    # Uneven load: three long streams on the busy replica, then a new request with the same
    # prefix goes to the idle one.
    socks = []
    for i in range(3):
        s = socket.create_connection(("127.0.0.1", port))
        body = json.dumps({"model": "tiny", "prompt": prefix + "stream", "max_tokens": 400,
                           "ignore_eos": True, "stream": True}).encode()
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        got = b""
        while b"data: " not in got:
            got += s.recv(65536)
        socks.append(s)
    w1 = workers()
    check(w1.get(busy, 0) == 7, f"the three streams went to the prefix's replica: {w1}")
    st, _, body = http(port, "POST", "/v1/completions",
                       {"model": "tiny", "prompt": prefix + "new", "max_tokens": 4})
    w2 = workers()
    idle = [u for u in w2 if u != busy]
    check(st == 200 and len(idle) == 1 and w2[idle[0]] == 1,
          f"the new request under uneven load went to the idle replica: {w2}")
    for s in socks:
        s.close()
    # SIGTERM to rank 0 with a stream in flight: the stream finishes, rank 0 stops the other
    # replica, and the job ends with 0.
    t = stream_in_flight(port, 2000)
    os.kill(rank0, signal.SIGTERM)
    check_drained(t, 2000, "dp job")
    try:
        rc = proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        rc = "hang"
    check(rc == 0, f"mpirun exit code after SIGTERM to rank 0: {rc}")
    if rc == 0:
        check_shutdown_line(proc, True, "dp job (the router's count)")


def main():
    mode, tessera = sys.argv[1], sys.argv[2]
    t0 = time.time()
    if mode == "single":
        if MISSING is not None:
            print(f"SKIPPED: {MISSING}")
            sys.exit(77)
        run_single(tessera)
    else:
        run_mpi(tessera, sys.argv[3])
    print(f"{mode}: {time.time() - t0:.1f} s, {len(failures)} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
