"""The official `openai` Python client and `curl` against the server (FakeEngine test server,
real HTTP on 127.0.0.1): completions and chat, streamed and not; streamed text equals the
non-streamed text for the same seed; usage counts against independent references (the prompt's
UTF-8 bytes + <bos>; the chat prompt rendered by jinja2 from the ChatML template); auth, errors,
413, metrics parsed by prometheus_client; SIGTERM finishes the stream in flight and exits 0.

Usage: openai_client_test.py <tessera_serving_test_server>"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

try:
    import httpx
    import jinja2
    import openai
    from prometheus_client.parser import text_string_to_metric_families
except ImportError as e:  # the venv of outside references is missing
    print(f"SKIPPED: {e}")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(__file__))
from serving_procs import http, sse_events, start_server, stop  # noqa: E402

SERVER = sys.argv[1]
KEY = "test-key-123"
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def curl(port, path, body, *extra):
    out = subprocess.run(["curl", "-sS", "-N", "-w", "\n%{http_code}", "-H",
                          f"Authorization: Bearer {KEY}", "-H", "Content-Type: application/json",
                          *extra, f"http://127.0.0.1:{port}{path}", "--data-binary", body],
                         capture_output=True, timeout=60, check=True)
    text, _, code = out.stdout.decode().rpartition("\n")
    return int(code), text


def main():
    tmp = tempfile.mkdtemp()
    model_dir = os.path.join(tmp, "models", "fake")
    os.makedirs(model_dir)
    with open(os.path.join(tmp, "secret.txt"), "w") as f:
        f.write("not for clients")
    open_log = os.path.join(tmp, "opened.log")
    proc, port = start_server(SERVER, "--api-key", KEY, "--step-us", "2000",
                              "--max-body-bytes", "65536", "--model", f"fake={model_dir}",
                              "--open-log", open_log)
    # Our own httpx client: openai 1.51 passes httpx 0.28 an argument it no longer takes.
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0,
                           http_client=httpx.Client())

    # Completions: non-streamed vs streamed, same seed.
    prompt = "Once upon a time, naïve"
    full = client.completions.create(model="fake", prompt=prompt, max_tokens=24, seed=99,
                                     temperature=0.9)
    text = full.choices[0].text
    check(len(text) == 24, f"24 one-byte tokens expected, got {text!r}")
    check(full.usage.prompt_tokens == len(prompt.encode()) + 1,
          f"prompt_tokens {full.usage.prompt_tokens} != {len(prompt.encode()) + 1}")
    check(full.usage.completion_tokens == 24, f"completion_tokens {full.usage.completion_tokens}")
    check(full.usage.total_tokens == full.usage.prompt_tokens + 24, "total_tokens")
    check(full.choices[0].finish_reason == "length", "finish_reason length")
    streamed, usage, n_chunks = "", None, 0
    for chunk in client.completions.create(model="fake", prompt=prompt, max_tokens=24, seed=99,
                                           temperature=0.9, stream=True,
                                           stream_options={"include_usage": True}):
        if chunk.choices:
            streamed += chunk.choices[0].text
            n_chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
    check(streamed == text, f"streamed {streamed!r} != non-streamed {text!r}")
    check(n_chunks == 24, f"one chunk per step: {n_chunks} chunks for 24 tokens")
    check(usage is not None and usage.completion_tokens == 24 and
          usage.prompt_tokens == full.usage.prompt_tokens, f"stream usage {usage}")
    other = client.completions.create(model="fake", prompt=prompt, max_tokens=24, seed=100,
                                      temperature=0.9)
    check(other.choices[0].text != text, "another seed gives another text")

    # Chat: the prompt is ChatML as jinja2 renders it.
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Say hi — in 日本語?"}]
    rendered = jinja2.Template(CHATML).render(messages=messages, add_generation_prompt=True)
    chat = client.chat.completions.create(model="fake", messages=messages, max_tokens=10,
                                          temperature=0)
    check(chat.usage.prompt_tokens == len(rendered.encode()),
          f"chat prompt_tokens {chat.usage.prompt_tokens} != {len(rendered.encode())}")
    check(chat.choices[0].message.role == "assistant", "assistant role")
    content = chat.choices[0].message.content
    stream_content = "".join(c.choices[0].delta.content or "" for c in
                             client.chat.completions.create(model="fake", messages=messages,
                                                            max_tokens=10, temperature=0,
                                                            stream=True) if c.choices)
    check(stream_content == content, f"chat streamed {stream_content!r} != {content!r}")

    # n and several prompts.
    many = client.completions.create(model="fake", prompt=["a", "b"], n=2, max_tokens=5, seed=3)
    check(sorted(c.index for c in many.choices) == [0, 1, 2, 3], "4 choices")
    check(many.usage.completion_tokens == 20, "usage over n and prompts")

    # Errors as the client sees them.
    try:
        openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0,
                      http_client=httpx.Client()).models.list()
        check(False, "wrong key accepted")
    except openai.AuthenticationError:
        pass
    try:
        client.completions.create(model="no-such-model", prompt="x")
        check(False, "unknown model accepted")
    except openai.NotFoundError:
        pass
    try:
        client.completions.create(model="fake", prompt="x", temperature=-1)
        check(False, "temperature -1 accepted")
    except openai.BadRequestError as e:
        check("temperature" in str(e) and "-1" in str(e), f"400 names the field: {e}")
    check([m.id for m in client.models.list().data] == ["fake"], "models list")
    # models.retrieve: GET /v1/models/{id}, the same object as in the list; an unknown id is a 404.
    one = client.models.retrieve("fake")
    check(one.id == "fake" and one.model_dump() == client.models.list().data[0].model_dump(),
          f"models.retrieve: {one}")
    for name in ["no-such-model", "fake%20", "fake/x"]:
        try:
            client.models.retrieve(name)
            check(False, f"models.retrieve({name!r}) accepted")
        except openai.NotFoundError as e:
            check("does not exist" in str(e), f"404 names the model: {e}")
    got = urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/models/fak%65", headers={"Authorization": f"Bearer {KEY}"}),
        timeout=60)
    check(json.loads(got.read())["id"] == "fake", "GET /v1/models/fak%65: the id percent-decoded")
    # A request names a model, never a path: nothing outside the configured folder is opened.
    for name in [os.path.join(tmp, "secret.txt"), "../secret.txt", tmp, model_dir,
                 "/etc/passwd", "fake/../../secret.txt"]:
        try:
            client.completions.create(model=name, prompt="x", max_tokens=1)
            check(False, f"model {name!r} accepted")
        except openai.NotFoundError:
            pass
    with open(open_log) as f:
        opened = sorted(set(f.read().split()))
    check(opened == [os.path.join(model_dir, "config.json")], f"files opened: {opened}")

    # curl: the same texts, streamed and not; a body over 1 KiB (curl sends Expect: 100-continue);
    # an oversize body gets 413.
    body = json.dumps({"model": "fake", "prompt": prompt, "max_tokens": 24, "seed": 99,
                       "temperature": 0.9})
    code, out = curl(port, "/v1/completions", body)
    check(code == 200 and json.loads(out)["choices"][0]["text"] == text, f"curl: {code} {out}")
    code, out = curl(port, "/v1/completions", body[:-1] + ', "stream": true}')
    events = sse_events(out.encode())
    check(events[-1] == "[DONE]", "curl stream ends with [DONE]")
    check("".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == text,
          "curl streamed text")
    padded = json.dumps({"model": "fake", "prompt": "p", "max_tokens": 2, "user": "u" * 5000})
    code, _ = curl(port, "/v1/completions", padded)
    check(code == 200, f"a 5 kB body (Expect: 100-continue): {code}")
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump({"model": "fake", "prompt": "x" * 100000}, f)
        f.flush()
        code, out = curl(port, "/v1/completions", "@" + f.name)
    check(code == 413 and json.loads(out)["error"]["code"] == 413, f"oversize: {code} {out}")

    # Metrics, parsed by the reference parser.
    status, _, raw = http(port, "GET", "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    check(status == 200, "metrics 200")
    families = {f.name: f for f in text_string_to_metric_families(raw.decode())}
    for name in ["tessera_time_to_first_token_seconds", "tessera_inter_token_latency_seconds",
                 "tessera_e2e_request_latency_seconds", "tessera_request_queue_time_seconds"]:
        check(families.get(name) is not None and families[name].type == "histogram", name)
    gen = [s for s in families["tessera_generation_tokens"].samples
           if s.name == "tessera_generation_tokens_total"]
    check(gen and gen[0].value >= 24 * 3 + 10 + 20, f"generated tokens counted: {gen}")
    for name in ["tessera_num_requests_running", "tessera_num_requests_waiting",
                 "tessera_kv_cache_usage_perc", "tessera_prefix_cache_hit_rate"]:
        check(families.get(name) is not None and families[name].type == "gauge", name)

    # SIGTERM: the stream in flight finishes, then the process exits 0.
    result = {}

    def long_stream():
        s = client.completions.create(model="fake", prompt="last", max_tokens=300, stream=True)
        result["text"] = "".join(c.choices[0].text for c in s if c.choices)

    t = threading.Thread(target=long_stream)
    t.start()
    time.sleep(0.2)
    t0 = time.time()
    rc = stop(proc, signal.SIGTERM)
    t.join(10)
    check(rc == 0, f"exit code after SIGTERM: {rc}")
    check(len(result.get("text", "")) == 300, f"stream in flight completed: "
          f"{len(result.get('text', ''))} of 300 tokens")
    print(f"shutdown took {time.time() - t0:.2f} s with one 300-token stream in flight")

    if failures:
        print(f"{len(failures)} checks failed")
        sys.exit(1)
    print("all checks passed")


main()
