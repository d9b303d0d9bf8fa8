"""Helpers for the serving tests that drive real processes: the FakeEngine test server and
`tessera router`, each on 127.0.0.1 with an ephemeral port, stopped (and reaped) at exit."""

import atexit
import json
import os
import re
import select
import signal
import subprocess
import time
import urllib.error
import urllib.request

_procs = []


def _reap():
    for p in _procs:
        if p.poll() is None:
            p.kill()
            p.wait()


atexit.register(_reap)


def _wait_line(proc, pattern, timeout):
    """Reads proc's stdout until a line matches; returns the match."""
    deadline = time.time() + timeout
    buf = b""
    while time.time() < deadline:
        r, _, _ = select.select([proc.stdout], [], [], 0.1)
        if r:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            m = re.search(pattern, buf.decode(errors="replace"))
            if m:
                return m
        if proc.poll() is not None:
            break
    raise RuntimeError(f"process did not print {pattern!r} in {timeout} s; output: {buf!r}")


def start_server(binary, *args, timeout=20):
    if "--port" not in args:
        args = ("--port", "0", *args)
    p = subprocess.Popen([binary, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    _procs.append(p)
    port = int(_wait_line(p, r"READY (\d+)", timeout).group(1))
    return p, port


def start_router(tessera, backends, *args, timeout=60):
    cmd = [tessera, "router", "--port", "0"]
    for b in backends:
        cmd += ["--backend", b]
    p = subprocess.Popen(cmd + list(args), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    _procs.append(p)
    port = int(_wait_line(p, r"listening on http://127\.0\.0\.1:(\d+)", timeout).group(1))
    return p, port


def http(port, method, path, body=None, headers=None, timeout=30):
    """Returns (status, headers, body bytes); HTTP errors are returned, not raised."""
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def wait_until(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def sse_events(raw):
    """The data payloads of a Server-Sent Events body."""
    out = []
    for block in raw.decode().split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                out.append(line[6:])
    return out


def stop(proc, sig=signal.SIGTERM, timeout=20):
    proc.send_signal(sig)
    return proc.wait(timeout=timeout)
