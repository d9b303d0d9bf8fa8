"""`tessera router` in front of three FakeEngine test servers (real processes, real HTTP on
127.0.0.1): prefix affinity, least-loaded under imbalance, SIGKILL of a replica mid-load (every
request completes or ends with a clear error, none hangs, requests with no output yet complete
elsewhere), the replica taken back when it returns, SIGTERM exits 0; `tessera serve` and
`tessera router` refuse bad flags (and serve says the engine is not wired yet) in one line.

Usage: router_test.py <tessera binary> <tessera_serving_test_server>"""

import concurrent.futures
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from serving_procs import http, sse_events, start_router, start_server, stop, wait_until  # noqa

TESSERA, SERVER = sys.argv[1], sys.argv[2]
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def parse_or_none(event):
    """An SSE event's JSON object, or {} when it is not one (a broken event)."""
    try:
        v = json.loads(event)
        return v if isinstance(v, dict) else {}
    except ValueError:
        return {}


def workers(port):
    return json.loads(http(port, "GET", "/workers")[2])["workers"]


def cli_errors():
    """`tessera serve` with a model folder that is not there, and bad flags, fail with one clear
    line."""
    import subprocess
    cases = [(["serve", "--model", "m=/nonexistent"], "--model m=/nonexistent: "),
             (["serve", "--model", "m=/x", "--max-loaded-models", "0"],
              "--max-loaded-models must be >= 1, got 0"),
             (["serve", "--model", "nopath"], "--model nopath=nopath: "),
             (["serve", "--model", "=x"], "NAME=PATH or NAME=PATH:ADAPTER, got '=x'"),
             (["router", "--backend", "localhost:1"], "must start with http://"),
             # Seconds that made no timer: 1e300 and inf do not convert to milliseconds (they
             # were accepted), 0.0001 rounded to a 0 ms timer.
             (["router", "--backend", "http://127.0.0.1:1", "--health-interval", "1e300"],
              "--health-interval must be in [0.001, 1000000] seconds, got 1e+300"),
             (["router", "--backend", "http://127.0.0.1:1", "--health-timeout", "0.0001"],
              "--health-timeout must be in [0.001, 1000000] seconds, got 0.0001"),
             (["router", "--backend", "http://127.0.0.1:1", "--shutdown-timeout", "inf"],
              "--shutdown-timeout must be in [0.001, 1000000] seconds, got inf"),
             (["router", "--backend", "http://127.0.0.1:1", "--max-attempts", "0"],
              "--max-attempts must be >= 1, got 0"),
             (["router", "--backend", "http://127.0.0.1:1", "--health-failures", "0"],
              "--health-failures must be >= 1, got 0"),
             (["serve", "--model", "tiny", "--port", "0", "--header-timeout", "nan"],
              "--header-timeout must be in [0.001, 1000000] seconds, got nan"),
             # The message named --prompt-ids.
             (["generate", "--model", "tiny", "--prompt", "hi", "--stop-token-ids", "2,abc"],
              "--stop-token-ids must be a comma-separated list of token ids >= 0, got '2,abc'")]
    # Engine flags with a model that loads: refused before listening (they were found only when
    # the model loaded, and the server listened on with /health 503 "loading failed").
    for flag, value, want in [("--max-model-len", "-1", "--max-model-len must be >= 0, got -1"),
                              ("--kv-cache-memory", "12Q", "got '12Q'"),
                              ("--kv-cache-dtype", "int4", "got 'int4'"),
                              ("--block-size", "0", "--block-size must be >= 1, got 0"),
                              ("--max-num-seqs", "0", "--max-num-seqs must be >= 1, got 0"),
                              ("--kv-cache-fraction", "2", "must be in (0, 1], got 2")]:
        cases.append((["serve", "--model", "tiny", "--port", "0", flag, value], want))
    for args, want in cases:
        try:
            r = subprocess.run([TESSERA, *args], capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired as e:
            check(False, f"tessera {' '.join(args)}: still running after 30 s (stdout "
                  f"{e.stdout!r}, stderr {e.stderr!r})")
            continue
        check(r.returncode != 0 and want in r.stderr, f"tessera {' '.join(args)}: rc "
              f"{r.returncode}, stderr {r.stderr.strip()!r}")


# A fake replica's pieces: a listening socket on an ephemeral port, a request head read whole,
# and the answer of a healthy /health.
HEALTH_OK = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
             b"Content-Length: 15\r\n\r\n{\"status\":\"ok\"}")


def fake_listener():
    import socket
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    return lsock, lsock.getsockname()[1]


def serve_forever(lsock, handle):
    """Accepts on `lsock` in a daemon thread, `handle(conn)` for each connection, until the socket
    is closed."""
    import threading

    def loop():
        while True:
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            handle(conn)

    threading.Thread(target=loop, daemon=True).start()


def read_head(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(65536)
        if not more:
            break
        data += more
    return data


def cut_event_check():
    """A replica that dies in the middle of an SSE event: the client gets the whole events before
    it, then a parseable error event and [DONE]; the cut-off half event is not passed on (glued to
    the error event it made both unreadable)."""
    first = 'data: {"choices":[{"index":0,"text":"Hello","finish_reason":null}]}\n\n'
    half = 'data: {"choices":[{"index":0,"te'
    lsock, port = fake_listener()

    def answer(conn):
        data = read_head(conn)
        if data.startswith(b"GET /health"):
            conn.sendall(HEALTH_OK)
        else:  # a stream (chunked, as ours): one event, half of the next, then it is gone
            def chunk(text):
                return f"{len(text):x}\r\n{text}\r\n".encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n" + chunk(first))
            time.sleep(0.1)
            conn.sendall(chunk(half))
            time.sleep(0.1)
        conn.close()

    serve_forever(lsock, answer)
    router, rport = start_router(TESSERA, [f"http://127.0.0.1:{port}"], "--health-interval", "0.2")
    wait_until(lambda: all(w["healthy"] for w in workers(rport)), 10, "the fake replica healthy")
    status, _, raw = http(rport, "POST", "/v1/completions",
                          {"prompt": "x", "max_tokens": 5, "stream": True})
    events = sse_events(raw)
    check(status == 200 and len(events) == 3 and events[-1] == "[DONE]",
          f"cut event: 3 events (whole, error, [DONE]): {status} {raw[:400]!r}")
    if len(events) == 3:
        check(json.loads(events[0])["choices"][0]["text"] == "Hello", "cut event: first event whole")
        try:
            err = json.loads(events[1])["error"]
            check("the replica serving this stream failed" in err["message"],
                  f"cut event: error event names the failure: {err}")
        except (ValueError, KeyError) as e:
            check(False, f"cut event: the error event is not valid JSON ({e}): {events[1]!r}")
    check(stop(router) == 0, "cut event: router exit code after SIGTERM")
    lsock.close()


def slow_health_check():
    """The only replica in rotation answers two /health checks in a row past --health-timeout: it
    stays in rotation (fewer than --health-failures, 3) and every request through the router is
    answered 200 (one failed check took it out, and until the next good check every request got
    503 "no healthy replica"). After 3 failed checks in a row it is taken out."""
    import threading
    state = {"slow": 0, "fail": False, "health": 0}
    lsock, port = fake_listener()

    def answer(conn):
        data = read_head(conn)
        if data.startswith(b"GET /health"):
            state["health"] += 1
            if state["slow"] > 0:
                state["slow"] -= 1
                time.sleep(0.8)  # past the router's 0.3 s --health-timeout
            if state["fail"]:
                conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            else:
                conn.sendall(HEALTH_OK)
        else:
            body = b'{"choices":[{"index":0,"text":"ok","finish_reason":"length"}]}'
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        conn.close()

    # A thread per connection: a slow /health must not hold the completions back.
    serve_forever(lsock, lambda c: threading.Thread(target=answer, args=(c,), daemon=True).start())
    router, rport = start_router(TESSERA, [f"http://127.0.0.1:{port}"], "--health-interval",
                                 "0.1", "--health-timeout", "0.3")
    try:
        wait_until(lambda: all(w["healthy"] for w in workers(rport)), 10, "the fake replica healthy")
        state["slow"] = 2
        seen = state["health"]
        codes = {}
        t_end = time.time() + 2.5  # the slow checks, and the good ones after them
        while time.time() < t_end:
            status, _, _ = http(rport, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 1})
            codes[status] = codes.get(status, 0) + 1
        print("two slow /health checks of the only replica:", codes,
              f"({state['health'] - seen} health checks)")
        check(state["slow"] == 0, "the slow health checks were made")
        check(list(codes) == [200], f"two slow health checks: every request answered 200: {codes}")
        # Failing for good: out after --health-failures (3) checks, and then "no healthy replica".
        state["fail"] = True
        wait_until(lambda: not workers(rport)[0]["healthy"], 5, "the failing replica taken out")
        status, _, raw = http(rport, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 1})
        check(status == 503 and b"no healthy replica" in raw, f"then 503: {status} {raw[:200]!r}")
    finally:
        check(stop(router) == 0, "slow health check: router exit code after SIGTERM")
        lsock.close()


def main():
    cli_errors()
    cut_event_check()
    slow_health_check()
    # max-running 2: most requests of a burst wait in the queue (no output yet) at any moment.
    server_args = ["--step-us", "5000", "--max-running", "2"]
    servers = [start_server(SERVER, *server_args) for _ in range(3)]
    urls = [f"http://127.0.0.1:{port}" for _, port in servers]
    router, rport = start_router(TESSERA, urls, "--health-interval", "0.2", "--health-timeout",
                                 "0.5", "--balance-abs-threshold", "3",
                                 "--balance-rel-threshold", "1.5")
    wait_until(lambda: all(w["healthy"] for w in workers(rport)), 10, "every replica healthy")
    # /v1/models and /v1/models/{id} pass through to a replica (they all serve the same models).
    status, _, body = http(rport, "GET", "/v1/models")
    check(status == 200, f"/v1/models through the router: {status} {body[:200]}")
    first = json.loads(body)["data"][0]
    status, _, body = http(rport, "GET", "/v1/models/" + first["id"])
    check(status == 200 and json.loads(body) == first, f"/v1/models/{{id}}: {status} {body[:200]}")
    status, _, body = http(rport, "GET", "/v1/models/no-such-model")
    check(status == 404 and b"does not exist" in body, f"unknown id: {status} {body[:200]}")

    # Prefix affinity: requests sharing a long prefix land on one replica.
    system = "You are a helpful assistant. " * 20
    routed0 = [w["routed"] for w in workers(rport)]  # the /v1/models requests above count too
    for i in range(8):
        status, _, body = http(rport, "POST", "/v1/completions",
                               {"prompt": system + f"Question {i}?", "max_tokens": 2})
        check(status == 200, f"affinity request {i}: {status} {body[:200]}")
    routed = [w["routed"] - r0 for w, r0 in zip(workers(rport), routed0)]
    by_cache = [w["routed_by_cache"] for w in workers(rport)]
    print("shared-prefix requests per replica:", routed, "by cache:", by_cache)
    check(sorted(routed) == [0, 0, 8] and max(by_cache) == 7,
          f"8 shared-prefix requests on one replica: {routed} {by_cache}")
    home = routed.index(8)

    # Uneven load: keep the home replica busy, then the same prefix goes to an idle one.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        # Load is what the router has in flight: send long requests through it.
        long = [pool.submit(http, rport, "POST", "/v1/completions",
                            {"prompt": system + f"Long {i}?", "max_tokens": 60})
                for i in range(5)]
        wait_until(lambda: sum(w["load"] for w in workers(rport)) == 5 and
                   workers(rport)[home]["load"] >= 4, 5, "5 long requests in flight")
        before = [w["routed"] for w in workers(rport)]
        status, _, _ = http(rport, "POST", "/v1/completions",
                            {"prompt": system + "One more?", "max_tokens": 2})
        after = [w["routed"] for w in workers(rport)]
        moved = [a - b for a, b in zip(after, before)]
        print("loads when imbalanced:", [w["load"] for w in workers(rport)], "new request:", moved)
        check(status == 200 and moved[home] == 0 and sum(moved) == 1,
              f"under uneven load the new request avoids the busy replica: {moved}")
        for f in long:
            check(f.result()[0] == 200, "long request completed")

    # SIGKILL one replica (not the home one) in the middle of a burst.
    victim = (home + 1) % 3

    def one(i):
        stream = i % 2 == 0
        body = {"prompt": f"burst {i} " + "x" * (i % 7), "max_tokens": 30, "stream": stream}
        t0 = time.time()
        status, headers, raw = http(rport, "POST", "/v1/completions", body, timeout=30)
        took = time.time() - t0
        if not stream:
            ok = status == 200 and json.loads(raw)["usage"]["completion_tokens"] == 30
            return ("complete" if ok else f"error {status} {raw[:120]}", took, stream)
        events = sse_events(raw)
        if status != 200:
            return (f"error {status} {raw[:120]}", took, stream)
        if events and events[-1] == "[DONE]" and all('"error"' not in e for e in events):
            text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
            return ("complete" if len(text) == 30 else f"short {len(text)}", took, stream)
        if events and events[-1] == "[DONE]" and len(events) >= 2 and \
                "error" in parse_or_none(events[-2]) and \
                all("choices" in parse_or_none(e) for e in events[:-2]):
            return ("clear error event", took, stream)
        return (f"broken {events[-2:]}", took, stream)

    with concurrent.futures.ThreadPoolExecutor(36) as pool:
        futures = [pool.submit(one, i) for i in range(36)]
        time.sleep(0.25)
        servers[victim][0].send_signal(signal.SIGKILL)
        servers[victim][0].wait()
        results = [f.result(timeout=40) for f in futures]
    outcomes = {}
    for r, took, stream in results:
        outcomes[r] = outcomes.get(r, 0) + 1
    print("burst of 36 with one replica SIGKILLed:", outcomes,
          f"slowest {max(t for _, t, _ in results):.2f} s")
    check(all(r in ("complete", "clear error event") for r, _, _ in results),
          f"every request completes or ends with a clear error: {outcomes}")
    check(all(r == "complete" for r, _, s in results if not s),
          "requests with no output yet (non-streamed) all complete on another replica")
    check(outcomes.get("complete", 0) >= 30, f"most requests complete: {outcomes}")
    w = workers(rport)
    check(not w[victim]["healthy"], "the killed replica is out of rotation")
    status, _, raw = http(rport, "GET", "/metrics")
    retries = [l for l in raw.decode().splitlines() if l.startswith("tessera_router_retries_total")]
    print("router:", retries)
    check(retries and float(retries[0].split()[-1]) >= 1, "requests were retried")

    # The replica comes back on its port and is taken in again.
    port = servers[victim][1]
    revived = start_server(SERVER, *server_args[:-2], "--port", str(port))
    del revived
    wait_until(lambda: workers(rport)[victim]["healthy"], 5, "the replica back in rotation")
    before = workers(rport)[victim]["routed"]
    for i in range(6):
        http(rport, "POST", "/v1/completions", {"prompt": f"fresh text {i}", "max_tokens": 1})
    check(workers(rport)[victim]["routed"] > before, "the returned replica gets requests again")

    rc = stop(router)
    check(rc == 0, f"router exit code after SIGTERM: {rc}")
    if failures:
        print(f"{len(failures)} checks failed")
        sys.exit(1)
    print("all checks passed")


main()
