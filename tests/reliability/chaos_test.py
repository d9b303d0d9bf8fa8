#!/usr/bin/env python3
"""Chaos: SIGKILL or SIGSTOP one rank of a 2-rank job at a random moment, and check how the job ends.

Jobs (the first four rounds: serve KILL, serve STOP of an idle group, train KILL, train STOP,
with --router a fifth: router STOP; later rounds draw job and signal at random; the victim rank
and the moment are always random):
  serve  `mpirun -np 2 tessera serve --model tiny --tp 2` with streamed completions in flight, or
         idle (no request for longer than the watchdog's timeout, which the group must survive,
         then the signal);
  train  `mpirun -np 2 tessera train` (digits, ZeRO-1, a checkpoint every 5 steps), signalled once
         its first checkpoint is written; afterwards `--resume` must continue from the last
         complete checkpoint and finish.
  router (--router) two single-process `tessera serve` behind `tessera router`, whole completions
         through the router one after another; one replica is killed or stopped: every request
         must still be answered 200 (the router retries a request that has produced nothing on
         the other replica, and cuts the calls of a replica its health check takes out).
For every round: the rank that was not signalled ends within TESSERA_COMM_TIMEOUT + 5 s of the
signal and the job (mpirun) exits non-zero; after a SIGSTOP the survivor's output has the
watchdog's line ("tessera: watchdog: ... did not complete within ..."), which is what ends that
job (after a SIGKILL mpirun sees the death and ends the job within seconds, before any watchdog,
and a survivor's last words no longer reach mpirun's output); and no process of the job is left:
every job runs in a session of its own, and within timeout + 20 s of the signal no process of that
session may remain (any that does is a failure, and is killed: it is ours).

Usage: chaos_test.py [--rounds N] [--seed S] [--timeout T] [--json FILE] [--router]
        [--only serve|train|router]
  (default 4 rounds, or TESSERA_CHAOS_ROUNDS; ctest runs 5 with --router; --rounds 20 for the
   long run; --json writes every round).
  Environment (ctest): TESSERA_BIN, MPIEXEC.
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

BIN = os.environ["TESSERA_BIN"]
MPIEXEC = os.environ.get("MPIEXEC", "mpirun")


def session_pids(sid):
    """Processes of session `sid` (what a job started with start_new_session may have left)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rfind(")") + 2:].split()
        # fields[0] = state, [3] = session id
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(d))
    return out


def proc_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        return st[st.rfind(")") + 2]
    except OSError:
        return "?"


def proc_cmd(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return " ".join(a.decode(errors="replace") for a in f.read().split(b"\0")[:3])
    except OSError:
        return "?"


def rank_of(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return None
    for e in env:
        if e.startswith(b"OMPI_COMM_WORLD_RANK="):
            return int(e.split(b"=", 1)[1])
    return None


def rank_pids(sid, n, deadline):
    """{rank: pid} of the job's `n` tessera ranks."""
    while time.time() < deadline:
        ranks = {}
        for pid in session_pids(sid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv0 = f.read().split(b"\0")[0]
            except OSError:
                continue
            if argv0.endswith(b"tessera"):
                r = rank_of(pid)
                if r is not None:
                    ranks[r] = pid
        if len(ranks) == n:
            return ranks
        time.sleep(0.05)
    raise RuntimeError(f"did not find the {n} ranks of session {sid}")


class Job:
    def __init__(self, argv, env, tmp, name):
        self.err_path = os.path.join(tmp, name + ".err")
        self.out_path = os.path.join(tmp, name + ".out")
        self.err = open(self.err_path, "w")
        self.out = open(self.out_path, "w")
        self.p = subprocess.Popen([MPIEXEC, "-np", "2", "--oversubscribe", "--tag-output"] + argv,
                                  stdout=self.out, stderr=self.err, env=env,
                                  start_new_session=True)
        self.sid = self.p.pid

    def text(self):
        self.out.flush()
        self.err.flush()
        with open(self.out_path) as f:
            o = f.read()
        with open(self.err_path) as f:
            return o + f.read()

    def wait(self, timeout):
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        return self.p.returncode

    def leftovers(self, deadline):
        """Waits until no process of the job's session is left, or `deadline`; returns the time
        the last one was gone (None if some were left) and those left with their state ("T":
        stopped), then kills those (they are ours)."""
        while time.time() < deadline and session_pids(self.sid):
            time.sleep(0.05)
        gone = time.time() if not session_pids(self.sid) else None
        left = [f"{pid} ({proc_state(pid)}) {proc_cmd(pid)}" for pid in session_pids(self.sid)]
        for pid in session_pids(self.sid):
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        if self.p.returncode is None:
            self.p.wait(timeout=30)
        return gone, left


def traffic(port, stop, counts):
    """Streamed completions, one after another, until `stop`; counts what happened."""
    body = json.dumps({"model": "tiny", "prompt": "the river under the stone", "max_tokens": 200,
                       "ignore_eos": True, "stream": True}).encode()
    while not stop.is_set():
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                for _ in r:
                    counts["chunks"] += 1
                    if stop.is_set():
                        break
            counts["done"] += 1
        except Exception:  # the job is being killed: what the client sees then is not checked
            counts["failed"] += 1
            time.sleep(0.1)


def serve_round(rng, sig, timeout, tmp, idle):
    env = dict(os.environ, TESSERA_COMM_TIMEOUT=str(timeout))
    job = Job([BIN, "serve", "--model", "tiny", "--tp", "2", "--port", "0"], env, tmp, "serve")
    port = None
    deadline = time.time() + 120
    while time.time() < deadline and port is None and job.p.poll() is None:
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", job.text())
        if m:
            port = int(m.group(1))
        time.sleep(0.1)
    info = {"job": "serve", "signal": sig.name, "idle": idle}
    if port is None:
        info["leftovers"] = job.leftovers(time.time())[1]
        info["error"] = "serve did not start: " + job.text()[-800:]
        return info
    ranks = rank_pids(job.sid, 2, time.time() + 30)
    stop = threading.Event()
    counts = {"chunks": 0, "done": 0, "failed": 0}
    t = None
    if idle:
        # Idle longer than the watchdog's timeout first: an idle group must stay up.
        time.sleep(timeout + 1 + rng.uniform(0, 2))
        info["alive_after_idle"] = job.p.poll() is None
    else:
        t = threading.Thread(target=traffic, args=(port, stop, counts), daemon=True)
        t.start()
        time.sleep(rng.uniform(0.5, 3.0))
    victim = rng.choice([0, 1])
    info.update({"victim_rank": victim, "chunks_before": counts["chunks"]})
    return finish_round(job, ranks, victim, sig, timeout, info, stop, t, counts)


def alive(pid):
    return proc_state(pid) not in ("?", "Z", "X")


def finish_round(job, ranks, victim, sig, timeout, info, stop=None, t=None, counts=None):
    t0 = time.time()
    os.kill(ranks[victim], sig)
    survivor = 1 - victim
    # When each rank ended (gone or a zombie), and mpirun.
    ended = {}
    mpirun_ended = None
    while time.time() < t0 + timeout + 20:
        for r, pid in ranks.items():
            if r not in ended and not alive(pid):
                ended[r] = time.time() - t0
        if mpirun_ended is None and job.p.poll() is not None:
            mpirun_ended = time.time() - t0
        if mpirun_ended is not None and len(ended) == len(ranks):
            break
        time.sleep(0.02)
    rc = job.p.poll()
    info["ended_after_s"] = round(mpirun_ended, 2) if mpirun_ended is not None else None
    info["survivor_ended_after_s"] = round(ended[survivor], 2) if survivor in ended else None
    info["victim_ended_after_s"] = round(ended[victim], 2) if victim in ended else None
    info["exit"] = rc
    if stop is not None:
        stop.set()
        if t is not None:
            t.join(timeout=70)
        info["traffic"] = counts
    gone, info["leftovers"] = job.leftovers(t0 + timeout + 20)
    info["all_gone_after_s"] = round(gone - t0, 2) if gone else None
    text = job.text()
    lines = [l for l in text.splitlines() if l.startswith(f"[1,{survivor}]")]
    why = [l for l in lines if "tessera: watchdog:" in l or "while blocked in" in l
           or "tessera: terminated by signal" in l]
    info["survivor_report"] = why[-1][:240] if why else None
    info["job_output_tail"] = text[-600:]
    return info


def train_round(rng, sig, timeout, tmp):
    env = dict(os.environ, TESSERA_COMM_TIMEOUT=str(timeout))
    ck = os.path.join(tmp, "ck")
    log = os.path.join(tmp, "train.jsonl")
    args = [BIN, "train", "--progress", "off", "--dim", "16", "--depth", "1", "--heads", "2",
            "--seed", "3", "--lr", "3e-3", "--global-batch", "16", "--zero",
            "--checkpoint-every", "5", "--checkpoint-dir", ck, "--log", log]
    job = Job(args + ["--steps", "100000"], env, tmp, "train")
    info = {"job": "train", "signal": sig.name}
    latest = os.path.join(ck, "latest")
    deadline = time.time() + 120
    while time.time() < deadline and not os.path.exists(latest) and job.p.poll() is None:
        time.sleep(0.05)
    if not os.path.exists(latest):
        info["leftovers"] = job.leftovers(time.time())[1]
        info["error"] = "no checkpoint: " + job.text()[-800:]
        return info
    ranks = rank_pids(job.sid, 2, time.time() + 30)
    time.sleep(rng.uniform(0.0, 2.0))
    victim = rng.choice([0, 1])
    info["victim_rank"] = victim
    info = finish_round(job, ranks, victim, sig, timeout, info)
    # Resume from the last complete checkpoint and run 3 steps past it.
    with open(latest) as f:
        last = f.read().strip()
    step = int(last.split("-")[1])
    info["resumed_from"] = step
    r = subprocess.run([MPIEXEC, "-np", "2", "--oversubscribe"] + args +
                       ["--resume", "--steps", str(step + 3)], capture_output=True, text=True,
                       timeout=180, env=env)
    recs = [json.loads(l) for l in open(log) if l.strip()]
    steps = [x["step"] for x in recs]
    info["resume_exit"] = r.returncode
    info["resume_ok"] = (r.returncode == 0 and steps == list(range(1, step + 4)))
    if not info["resume_ok"]:
        info["resume_error"] = r.stderr[-400:] + f" steps {steps[:3]}..{steps[-3:]}"
    return info


def start_plain(argv, tmp, name, pattern):
    """A process in a session of its own; returns (Popen, port) once it prints `pattern`."""
    out = open(os.path.join(tmp, name + ".out"), "w+")
    p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        out.flush()
        with open(out.name) as f:
            m = re.search(pattern, f.read())
        if m:
            return p, int(m.group(1))
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not start: " + open(out.name).read()[-500:])


def router_round(rng, sig, tmp):
    """Two single-process servers behind `tessera router`; one is killed or stopped while whole
    completions go through the router one after another. Every request must be answered 200
    (a request that has produced nothing is retried on the other replica), and the router must
    route around the failed replica."""
    info = {"job": "router", "signal": sig.name}
    procs = []
    try:
        ports = []
        for i in range(2):
            p, port = start_plain([BIN, "serve", "--model", "tiny", "--port", "0"], tmp,
                                  f"replica{i}", r"listening on http://127\.0\.0\.1:(\d+)")
            procs.append(p)
            ports.append(port)
        argv = [BIN, "router", "--port", "0", "--health-interval", "0.2", "--health-timeout", "0.5"]
        for port in ports:
            argv += ["--backend", f"http://127.0.0.1:{port}"]
        router, rport = start_plain(argv, tmp, "router", r"listening on http://127\.0\.0\.1:(\d+)")
        procs.append(router)
        # Both replicas in rotation before the traffic (a replica still loading its model is not
        # yet, and with the other one signalled "no healthy replica" would be the right answer).
        t_wait = time.time()
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{rport}/workers", timeout=5) as r:
                    if all(w["healthy"] for w in json.loads(r.read())["workers"]):
                        break
            except (OSError, ValueError, KeyError):
                pass
            if time.time() - t_wait > 60:
                raise RuntimeError("the router did not see both replicas healthy within 60 s")
            time.sleep(0.05)
        info["both_healthy_after_s"] = round(time.time() - t_wait, 2)
        victim = rng.choice([0, 1])
        info["victim_replica"] = victim
        body = json.dumps({"model": "tiny", "prompt": "the river under the stone",
                           "max_tokens": 16, "ignore_eos": True}).encode()
        codes, slow, why = [], 0, {}
        t_end = time.time() + 8
        signalled_at = time.time() + rng.uniform(0.5, 2.0)
        signalled = False
        while time.time() < t_end:
            if not signalled and time.time() >= signalled_at:
                os.kill(procs[victim].pid, sig)
                signalled = True
                info["requests_before_signal"] = len(codes)
            req = urllib.request.Request(f"http://127.0.0.1:{rport}/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
            t0 = time.time()
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    r.read()
                    codes.append(r.status)
            except urllib.error.HTTPError as e:
                codes.append(e.code)
                try:  # the router's reason, counted by message (seconds since the signal, first)
                    msg = json.loads(e.read())["error"]["message"]
                except Exception:  # noqa: BLE001 - any unreadable body
                    msg = "(no JSON error)"
                key = f"{e.code} {msg}"
                if key not in why:
                    why[key] = {"count": 0, "first_after_signal_s":
                                round(t0 - signalled_at, 2) if signalled else None}
                why[key]["count"] += 1
            except Exception as e:  # no answer at all
                codes.append(str(e)[:80])
            slow = max(slow, time.time() - t0)
        info["requests"] = len(codes)
        info["not_200"] = [c for c in codes if c != 200]
        info["not_200_why"] = why
        if why:  # the router's own account: which replica it took out and when, and why
            with open(os.path.join(tmp, "router.out")) as f:
                info["router_log"] = [l.strip() for l in f if "replica" in l][-20:]
        info["slowest_request_s"] = round(slow, 2)
    finally:
        left = []
        for p in procs:
            for sg in (signal.SIGCONT, signal.SIGTERM):
                try:
                    os.kill(p.pid, sg)
                except OSError:
                    pass
        for p in procs:
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                left.append(p.pid)
                p.kill()
                p.wait()
        info["leftovers"] = left
    return info


def judge(info, timeout):
    """The failures of one round."""
    bad = []
    if "error" in info:
        bad.append(info["error"])
        return bad
    if info.get("alive_after_idle") is False:
        bad.append("the idle job ended before the signal")
    if info["job"] == "router":
        if info["not_200"]:
            bad.append(f"{len(info['not_200'])} requests through the router not answered 200: "
                       f"{info.get('not_200_why') or info['not_200'][:5]}; router log: "
                       f"{info.get('router_log')}")
        if info["requests"] - info.get("requests_before_signal", 0) < 3:
            bad.append("fewer than 3 requests after the signal")
        if info["leftovers"]:
            bad.append(f"processes left behind: {info['leftovers']}")
        return bad
    if info["exit"] is None:
        bad.append(f"the job did not end within {timeout + 20} s of the signal")
    elif info["exit"] == 0:
        bad.append("the job exited 0")
    s = info["survivor_ended_after_s"]
    if s is None or s > timeout + 5:
        bad.append(f"the rank not signalled ended {s} s after the signal (> timeout {timeout} + 5)")
    if info["leftovers"]:
        bad.append(f"processes of the job left {timeout + 20} s after the signal: "
                   f"{info['leftovers']}")
    # A stopped peer ends the job through the watchdog: the survivor says so. After a SIGKILL
    # mpirun sees the death and ends the job itself within a few seconds, before any watchdog,
    # and what the survivor prints then no longer reaches mpirun's output.
    if info["signal"] == "SIGSTOP" and not info["survivor_report"]:
        bad.append("the rank that was not signalled printed no watchdog / blocked-in report")
    if info["job"] == "train" and not info.get("resume_ok"):
        bad.append("resume failed: " + info.get("resume_error", ""))
    return bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("TESSERA_CHAOS_ROUNDS", 4)))
    ap.add_argument("--seed", type=int, default=int(os.environ.get("TESSERA_CHAOS_SEED", 0)) or
                    int(time.time()))
    ap.add_argument("--timeout", type=float, default=8)
    ap.add_argument("--json", default=os.environ.get("TESSERA_CHAOS_JSON", ""))
    ap.add_argument("--router", action="store_true",
                    help="also rounds of two servers behind tessera router, one killed/stopped")
    ap.add_argument("--only", choices=["serve", "train", "router"], default=None,
                    help="every round this job (signals alternate KILL, STOP)")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    print(f"chaos: {a.rounds} rounds, seed {a.seed}, TESSERA_COMM_TIMEOUT={a.timeout}", flush=True)
    results, failures = [], 0
    t_start = time.time()
    for i in range(a.rounds):
        # The first four rounds cover every (job, signal) pair; later ones draw both at random.
        if a.only:
            job = a.only
            sig = signal.SIGKILL if i % 2 == 0 else signal.SIGSTOP
        elif i < 4:
            job = "serve" if i < 2 else "train"
            sig = signal.SIGKILL if i % 2 == 0 else signal.SIGSTOP
        elif i == 4 and a.router:
            job, sig = "router", signal.SIGSTOP
        else:
            job = rng.choice(["serve", "train", "router"] if a.router else ["serve", "train"])
            sig = rng.choice([signal.SIGKILL, signal.SIGSTOP])
        tmp = tempfile.mkdtemp(prefix="tessera-chaos-")
        try:
            if job == "router":
                info = router_round(rng, sig, tmp)
            elif job == "serve":
                # Round 2 (and a third of the later serve rounds) signals an idle group.
                idle = i == 1 if i < 4 else rng.random() < 1 / 3
                info = serve_round(rng, sig, a.timeout, tmp, idle=idle)
            else:
                info = train_round(rng, sig, a.timeout, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        bad = judge(info, a.timeout)
        info["failures"] = bad
        failures += bool(bad)
        results.append(info)
        short = {k: (len(info[k]) if k == "not_200" else info[k]) for k in ("job", "signal", "victim_rank", "victim_replica", "idle",
                                          "requests", "requests_before_signal", "not_200",
                                          "slowest_request_s",
                                          "survivor_ended_after_s", "victim_ended_after_s",
                                          "ended_after_s", "all_gone_after_s", "exit", "leftovers",
                                          "resumed_from")
                 if k in info}
        print(("ok   " if not bad else "FAIL ") + f"round {i + 1}: {short}", flush=True)
        if info.get("survivor_report"):
            print("     survivor: " + info["survivor_report"], flush=True)
        for b in bad:
            print("     " + b, flush=True)
            if "job_output_tail" in info:
                print("     job output: " + info["job_output_tail"].replace("\n", "\n       "))
    summary = {"rounds": a.rounds, "seed": a.seed, "timeout_s": a.timeout, "failed_rounds": failures,
               "seconds": round(time.time() - t_start, 1),
               "max_survivor_ended_after_s": max((r.get("survivor_ended_after_s") or 0
                                                  for r in results), default=0),
               "max_ended_after_s": max((r.get("ended_after_s", 0) for r in results), default=0),
               "max_all_gone_after_s": max((r.get("all_gone_after_s") or 0 for r in results),
                                           default=0),
               "results": [{k: v for k, v in r.items() if k != "job_output_tail"} for r in results]}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=1)
    print(f"chaos: {a.rounds - failures}/{a.rounds} rounds ok in {summary['seconds']} s", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
