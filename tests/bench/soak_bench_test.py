"""Runs `tessera bench soak --quick --json` (a real `tessera serve` on 127.0.0.1 under mixed traffic:
streams, whole answers, client disconnects and aborts, 413, malformed JSON, a field of the wrong
type, prompts past --max-model-len) and checks its report: nothing lost, nothing answered twice, no unexpected
outcome, something completed, the engine preempted, the KV pool empty at the end, the server's
open fds flat; and holds the client's counts against the server's own /metrics (sequences
finished by length, aborted ones, 400s), which count independently of the client.

Usage: python3 soak_bench_test.py   (TESSERA_BIN from the ctest environment)
"""
import json
import os
import subprocess
import unittest

BIN = os.environ["TESSERA_BIN"]


class SoakBenchTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        run = subprocess.run([BIN, "bench", "soak", "--quick", "--json"], capture_output=True,
                             text=True, timeout=200)
        cls.rc = run.returncode
        cls.stderr = run.stderr
        lines = [l for l in run.stdout.splitlines() if l.startswith("{")]
        if not lines:
            raise AssertionError(f"no report ({run.returncode}): {run.stderr[-2000:]}")
        cls.d = json.loads(lines[-1])

    def test_nothing_lost_or_duplicated(self):
        d = self.d
        self.assertEqual(d["lost"], 0, d["lost_reasons"])
        self.assertEqual(d["duplicated"], 0)
        self.assertEqual(d["unexpected"], 0, d["errors"])
        self.assertGreater(d["completed"], 0)
        self.assertEqual(d["sent"], d["completed"] + d["errored"] + d["lost"])
        self.assertEqual(sum(e["count"] for e in d["errors"].values()), d["errored"])

    def test_every_kind_of_request_was_sent_and_answered_as_designed(self):
        d = self.d
        for kind in ("stream", "whole", "disconnect_mid_stream", "abort_before_answer",
                     "oversize_body", "malformed_json", "wrong_typed_field",
                     "prompt_past_max_model_len"):
            self.assertGreater(d["sent_by_kind"].get(kind, 0), 0, kind)
        reasons = " | ".join(d["errors"])
        for part in ("413 ", "400 request body is not valid JSON", "maximum context length",
                     "disconnected mid-stream"):
            self.assertIn(part, reasons)
        # A wrong-typed field is refused naming it: the reason groups by message, and the report
        # marks a 400 that names another field (or none) unexpected.
        self.assertTrue(any(r.startswith("400 ") and "'" in r for r in d["errors"]), reasons)
        bad = sum(d["sent_by_kind"][k] for k in ("malformed_json", "wrong_typed_field",
                                                  "prompt_past_max_model_len"))
        n400 = sum(e["count"] for r, e in d["errors"].items() if r.startswith("400 "))
        self.assertEqual(n400, bad)
        n413 = sum(e["count"] for r, e in d["errors"].items() if r.startswith("413 "))
        self.assertEqual(n413, d["sent_by_kind"]["oversize_body"])

    def test_client_counts_match_the_servers_metrics(self):
        d, m = self.d, self.d["metrics_end"]
        fin = m["sequences_finished_by_reason"]
        # Every completed answer is a sequence the engine finished by length (ignore_eos); an
        # abort-kind request may also have finished just before the client cut it.
        self.assertGreaterEqual(fin["length"], d["completed"])
        cut = sum(e["count"] for r, e in d["errors"].items() if "(by design)" in r)
        # Every sequence that reached the engine ended for the client as a completed answer or a
        # cut (one cut before the server read it never reached the engine).
        self.assertLessEqual(fin["length"] + fin["abort"], d["completed"] + cut)
        self.assertGreater(fin["abort"], 0)
        self.assertLessEqual(fin["error"], 0)  # -1: no sequence ever finished with an error
        n400 = sum(e["count"] for r, e in d["errors"].items() if r.startswith("400 "))
        self.assertEqual(m["completions_answered_by_code"]["400"], n400)
        # The HTTP layer's own answers count too (route "refused"): every 413 the client got.
        n413 = sum(e["count"] for r, e in d["errors"].items() if r.startswith("413 "))
        self.assertGreater(n413, 0)
        self.assertEqual(m["completions_answered_by_code"]["413"], n413)

    def test_engine_preempted_and_the_pool_is_empty_at_the_end(self):
        m = self.d["metrics_end"]
        self.assertGreater(self.d["preemptions"], 0)
        self.assertEqual(m["kv_cache_blocks_used"], 0)
        self.assertGreater(m["kv_cache_blocks_total"], 0)
        self.assertEqual(m["num_requests_running"], 0)
        self.assertEqual(m["num_requests_waiting"], 0)

    def test_fds_flat_and_clean_exit(self):
        f = self.d["fds"]
        self.assertGreater(f["start"], 0)
        self.assertLessEqual(f["end"], f["start"] * 1.05, f)
        self.assertEqual(self.d["server"]["exit_status_after_sigterm"], 0)
        self.assertEqual(self.rc, 0, self.d["failures"])

    def test_bad_length_overrides_are_refused(self):
        # One line naming the variable and the value, before any server starts (1e300 was taken:
        # as a request count it does not convert to an integer).
        for name, value in [("TESSERA_SOAK_SECONDS", "1e300"), ("TESSERA_SOAK_SECONDS", "-1"),
                            ("TESSERA_SOAK_MIN_REQUESTS", "1e300"),
                            ("TESSERA_SOAK_SEED", "x")]:
            run = subprocess.run([BIN, "bench", "soak", "--quick"], capture_output=True, text=True,
                                 timeout=30, env={**os.environ, name: value})
            self.assertNotEqual(run.returncode, 0, (name, value))
            self.assertIn(f"{name} must be a positive number", run.stderr, (name, value))
            self.assertIn(f"got '{value}'", run.stderr, (name, value))


if __name__ == "__main__":
    unittest.main()
