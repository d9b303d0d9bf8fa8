#!/usr/bin/env python3
"""examples/slurm/train.sbatch in the local SLURM cluster (scripts/slurm_cluster.sh): SIGUSR1 sent
by SLURM to the job's tasks mid-run (scancel --signal=USR1, what --signal=USR1@T does at the
warning time) → `tessera train` checkpoints and exits 76 → the script requeues the job → the next
run resumes with --resume → the job completes with parameters bitwise equal to an uninterrupted
`mpirun -np 2` run of the same config (CPU fp32), and the same loss curve. Then SIGKILL of one task
of `srun -n 2 tessera train`: every task ends within the watchdog timeout, the last checkpoint
complete.

Environment (ctest): SLURM_CONF (the cluster; missing → exit 77, skipped), TESSERA_BIN, MPIEXEC,
TESSERA_SOURCE_DIR.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time

# Enough steps that the job is still training when the test, polling its loss log every 50 ms,
# signals it: 60 steps took 0.1 s on a quiet machine, and the USR1 came after the job had ended
# (a fresh-clone CI run, 2026-12-01). ~1.7 ms a step here: 3,000 take ~5 s.
STEPS = 3000
CHECKPOINT_EVERY = 500
TRAIN_ARGS = ["--dim", "16", "--depth", "1", "--heads", "2", "--seed", "3", "--lr", "3e-3",
              "--warmup-steps", "5", "--global-batch", "16", "--zero", "--steps", str(STEPS)]
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def sh(cmd, timeout=60):
    return subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True,
                          timeout=timeout)


def job_field(job, field):
    out = sh(["scontrol", "show", "job", "-o", job]).stdout
    m = re.search(r"\b" + field + r"=(\S+)", out)
    return m.group(1) if m else ""


def read_log(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def kill_under_srun(jobs, binary):
    """SIGKILL of one task of `srun -n 2 tessera train`: every task ends within the watchdog
    timeout (TESSERA_COMM_TIMEOUT) and the last checkpoint is complete (resuming from such a
    checkpoint is train_cli_test's)."""
    watchdog_s = 20
    ck = os.path.join(jobs, "killed")
    log = os.path.join(jobs, "killed.jsonl")
    name = f"tessera-train-kill-{os.getpid()}"
    cmd = ["srun", "--mpi=pmix", "-n", "2", f"--job-name={name}", binary, "train", "--progress",
           "off", "--checkpoint-dir", ck, "--checkpoint-every", "5", "--log", log] + TRAIN_ARGS
    env = dict(os.environ, TESSERA_COMM_TIMEOUT=str(watchdog_s), TESSERA_NUM_THREADS="1")
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(read_log(log)) < 10:
        time.sleep(0.05)
    job = sh(["squeue", "-h", "-n", name, "-o", "%i"]).stdout.strip()
    # PID JOBID STEPID LOCALID GLOBALID: the task whose global rank is 1.
    pids = [l.split() for l in sh(["scontrol", "listpids", job]).stdout.splitlines()[1:]]
    victim = [int(f[0]) for f in pids if len(f) == 5 and f[4] == "1"]
    check(len(victim) == 1, f"rank 1 of srun job {job} found ({pids})")
    if not victim:
        p.kill()
        p.communicate()
        return
    t0 = time.time()
    os.kill(victim[0], 9)
    try:
        _, err = p.communicate(timeout=watchdog_s + 30)
    except subprocess.TimeoutExpired:
        sh(["scancel", job])
        _, err = p.communicate()
    ended = time.time() - t0
    check(p.returncode != 0 and ended <= watchdog_s + 5,
          f"srun: every task ended {ended:.1f} s after SIGKILL of rank 1 (watchdog {watchdog_s} s, "
          f"rc {p.returncode})")
    done = len(read_log(log))
    latest = open(os.path.join(ck, "latest")).read().strip()
    check(done < STEPS and os.path.exists(os.path.join(ck, latest, "model.safetensors")),
          f"cut short at step {done}; {latest} complete")
    print(f"[srun kill] SIGKILL at step {done}, every task ended in {ended:.1f} s")


def main():
    conf = os.environ.get("SLURM_CONF", "")
    if not os.path.exists(conf):
        print(f"no local SLURM cluster ({conf} missing: scripts/slurm_cluster.sh up was skipped)")
        sys.exit(77)
    binary = os.environ["TESSERA_BIN"]
    src = os.environ["TESSERA_SOURCE_DIR"]
    jobs = os.path.join(os.path.dirname(conf), "jobs", "train")
    shutil.rmtree(jobs, ignore_errors=True)
    os.makedirs(jobs)
    run_dir = os.path.join(jobs, "run")

    # The job: 2 tasks, checkpoints every 20 steps, the script's own requeue on exit 76.
    t0 = time.time()
    env = dict(os.environ, TESSERA=binary, RUN_DIR=run_dir,
               CHECKPOINT_EVERY=str(CHECKPOINT_EVERY), TRAIN_ARGS=" ".join(TRAIN_ARGS))
    r = subprocess.run(["sbatch", "--parsable", "--output=train-%j.out",
                        os.path.join(src, "examples/slurm/train.sbatch")],
                       cwd=jobs, env=env, capture_output=True, text=True, timeout=30)
    check(r.returncode == 0, f"sbatch train.sbatch ({r.stderr.strip()})")
    job = r.stdout.strip().split(";")[0]
    log = os.path.join(run_dir, "loss.jsonl")

    # Mid-run (a few steps done, most to come): SIGUSR1 to the tasks of the job's steps.
    deadline = time.time() + 120
    while time.time() < deadline and len(read_log(log)) < 5:
        time.sleep(0.05)
    at_signal = len(read_log(log))
    r = sh(["scancel", "--signal=USR1", job])
    check(r.returncode == 0 and 5 <= at_signal < STEPS,
          f"scancel --signal=USR1 {job} at step {at_signal} of {STEPS} ({r.stderr.strip()})")

    # Requeued (held cred_expire + 1 s), run again, completed.
    state = ""
    deadline = time.time() + 180
    while time.time() < deadline:
        state = job_field(job, "JobState")
        # SLURM's final states; all others (REQUEUE*, SIGNALING, COMPLETING, ...) pass.
        if state in ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                     "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED"):
            break
        time.sleep(0.2)
    seconds = time.time() - t0
    out_file = os.path.join(jobs, f"train-{job}.out")
    out = open(out_file).read() if os.path.exists(out_file) else ""
    check(state == "COMPLETED" and job_field(job, "ExitCode") == "0:0",
          f"job {job} {state} {job_field(job, 'ExitCode')} after {seconds:.1f} s:\n{out}")
    restarts = job_field(job, "Restarts")
    check(restarts == "1", f"requeued once (Restarts={restarts})")

    # What each run printed: the first stopped at step k with its checkpoint, the second went on
    # from k to the end.
    m = re.search(r"trained steps 0\.\.(\d+) in .*checkpoint (\S+)\nstopped early on request", out)
    check(m is not None, f"run 0 stopped early with a checkpoint:\n{out}")
    k = int(m.group(1)) if m else -1
    check(at_signal <= k < STEPS and m.group(2).endswith(f"step-{k:08d}"),
          f"run 0 checkpointed at step {k} (signal at step {at_signal})")
    check("checkpointed on the warning, requeueing" in out, "the script requeued the job")
    check(f"job {job} run 1:" in out, "a second run of the same job")
    check(re.search(rf"trained steps {k}\.\.{STEPS} in ", out) is not None,
          f"run 1 resumed at step {k} and finished at {STEPS}")

    # The uninterrupted reference: the same config under mpirun, one thread per rank as in the job.
    ref_dir = os.path.join(jobs, "reference")
    ref_log = os.path.join(jobs, "reference.jsonl")
    r = subprocess.run([os.environ.get("MPIEXEC", "mpirun"), "-np", "2", "--oversubscribe", binary,
                        "train", "--progress", "off", "--checkpoint-dir", ref_dir,
                        "--log", ref_log] + TRAIN_ARGS,
                       env=dict(os.environ, TESSERA_NUM_THREADS="1"), capture_output=True,
                       text=True, timeout=180)
    check(r.returncode == 0, f"uninterrupted mpirun run (rc {r.returncode}: {r.stderr[-300:]})")
    final = os.path.join(run_dir, "checkpoints", f"step-{STEPS:08d}", "model.safetensors")
    ref = os.path.join(ref_dir, f"step-{STEPS:08d}", "model.safetensors")
    same = os.path.exists(final) and os.path.exists(ref) and \
        open(final, "rb").read() == open(ref, "rb").read()
    check(same, f"final parameters bitwise equal to the uninterrupted run ({final} vs {ref})")
    got, want = read_log(log), read_log(ref_log)
    check([x["step"] for x in got] == list(range(1, STEPS + 1)),
          f"the job's loss log reads as one run: steps 1..{STEPS} once each")
    diffs = [a["step"] for a, b in zip(got, want) if a["loss"] != b["loss"]]
    check(len(got) == len(want) and not diffs,
          f"loss curve bitwise equal to the uninterrupted run's (differs at {diffs[:5]})")
    check(len(want) == STEPS and want[-1]["loss"] < 0.9 * want[0]["loss"],
          f"the loss fell ({want[0]['loss']:.3f} -> {want[-1]['loss']:.3f})" if want else "log")
    print(f"[train.sbatch] USR1 at step {at_signal}, checkpoint at step {k}, 1 requeue, "
          f"{seconds:.1f} s from sbatch to completion")
    if not failures:
        kill_under_srun(jobs, binary)
    if failures:
        print(f"{len(failures)} check(s) failed")
        sys.exit(1)
    shutil.rmtree(jobs, ignore_errors=True)


if __name__ == "__main__":
    main()
