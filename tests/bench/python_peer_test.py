"""`tessera bench tokenizers` / `bench guided` when their Python side dies: the benchmark must end
with an error that says so and how the child ended, never by a SIGPIPE that ends it without a word
(before the fix, a peer that ended after its ready line made `bench tokenizers` exit 141, silent).

The peer here is a shell script given as TESSERA_VENV_PYTHON: it answers the ready line (naming a
one-word WordLevel tokenizer written here), then exits 3 before the first command; or it fails
before the ready line (exit 2, a message on stderr). Needs no venv.

Usage: python3 python_peer_test.py   (TESSERA_BIN from the ctest environment)
"""
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile

BIN = os.environ["TESSERA_BIN"]


def script(path, body):
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


def run(python, bench):
    env = dict(os.environ, TESSERA_VENV_PYTHON=python)
    p = subprocess.run([BIN, "bench", bench, "--quick"], env=env, capture_output=True, text=True,
                       timeout=120)
    return p.returncode, p.stdout + p.stderr


def main():
    failures = []

    def check(cond, what, out):
        print(("ok   " if cond else "FAIL ") + what)
        if not cond:
            failures.append(what)
            print("     output: " + out[-1500:].replace("\n", "\n     "))

    with tempfile.TemporaryDirectory(prefix="tessera-peer-") as d:
        tok = os.path.join(d, "tokenizer.json")
        with open(tok, "w") as f:
            json.dump({"version": "1.0", "pre_tokenizer": {"type": "Whitespace"},
                       "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "the": 1},
                                 "unk_token": "[UNK]"}}, f)
        ready = json.dumps({"one": {"path": tok, "digest": "0", "tokens": 0}})
        dies_after_ready = os.path.join(d, "dies_after_ready.sh")
        script(dies_after_ready, f"echo '{ready}'\nexit 3\n")
        rc, out = run(dies_after_ready, "tokenizers")
        check(rc not in (-signal.SIGPIPE, 128 + signal.SIGPIPE),
              f"bench tokenizers, peer ended after its ready line: not killed by SIGPIPE (rc {rc})",
              out)
        check(rc == 1, f"bench tokenizers, peer ended after its ready line: exit 1 (rc {rc})", out)
        check("the Python side of the benchmark stopped (exit status 3)" in out,
              "bench tokenizers: the error names the peer's end (exit status 3)", out)

        fails_to_start = os.path.join(d, "fails_to_start.sh")
        script(fails_to_start, "echo 'no module named xgrammar' >&2\nexit 2\n")
        for bench in ("tokenizers", "guided"):
            rc, out = run(fails_to_start, bench)
            check(rc == 1, f"bench {bench}, peer failed to start: exit 1 (rc {rc})", out)
            check("did not start" in out and "(exit status 2)" in out and
                  "no module named xgrammar" in out,
                  f"bench {bench}: the error says the peer did not start, its exit status and "
                  "its own message", out)
    if failures:
        print(f"{len(failures)} failed")
        sys.exit(1)
    print("all passed")


if __name__ == "__main__":
    main()
