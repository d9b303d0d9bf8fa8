"""Runs `tessera bench serve --quick --json` as a user would and checks its report: every rate has
Tessera's throughput, TTFT and ITL percentiles, no request failed, p50 <= p99, the measured tokens
are the requests' (requests x max_tokens over the run's seconds), llama.cpp's entry either has the
same keys (then no failure, every output max_tokens long, and greedy texts equal to Tessera's on
the same checkpoint) or says why it was skipped; and scripts/plot_serve.py draws the report as a PNG.

Usage: python3 serve_bench_test.py   (TESSERA_BIN, TESSERA_SOURCE_DIR from the ctest environment)
"""
import json
import os
import subprocess
import tempfile
import unittest

BIN = os.environ["TESSERA_BIN"]
SRC = os.environ["TESSERA_SOURCE_DIR"]
KEYS = {"tok_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms"}


class ServeBenchTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        run = subprocess.run([BIN, "bench", "serve", "--quick", "--json"], capture_output=True,
                             text=True, timeout=240)
        if run.returncode != 0:
            raise AssertionError(f"bench failed ({run.returncode}): {run.stderr[-2000:]}")
        cls.text = run.stdout
        cls.data = json.loads(run.stdout)

    def test_every_rate_is_measured(self):
        rows = self.data["rates"]
        self.assertGreaterEqual(len(rows), 2)
        for r in rows:
            t = r["tessera"]
            self.assertTrue(KEYS <= set(t), t)
            self.assertEqual(t["failed"], 0, t)
            self.assertLessEqual(t["ttft_p50_ms"], t["ttft_p99_ms"])
            self.assertLessEqual(t["itl_p50_ms"], t["itl_p99_ms"])
            self.assertGreater(t["ttft_p50_ms"], 0)
            tokens = self.data["requests_per_rate"] * self.data["max_tokens"]
            self.assertAlmostEqual(t["tok_s"] * t["seconds"], tokens, delta=0.5)
            peer = r["llama_cpp"]
            self.assertTrue(KEYS <= set(peer) or peer.get("skipped"), peer)
            if "skipped" not in peer:  # llama-cpp-python installed: measured like Tessera
                self.assertEqual(peer["failed"], 0, peer)
                self.assertEqual(peer["outputs_not_max_tokens"], 0, peer)
        if any("skipped" not in r["llama_cpp"] for r in rows):
            # The same checkpoint on both sides: greedy texts agree.
            self.assertEqual(self.data["same_greedy_output"], "4/4")

    def test_plot(self):
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "serve.json")
            with open(src, "w") as f:
                f.write(self.text)
            png = os.path.join(d, "serve.png")
            subprocess.run(["/usr/bin/python3", os.path.join(SRC, "scripts", "plot_serve.py"), src,
                            png], check=True, timeout=120)
            with open(png, "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")


if __name__ == "__main__":
    unittest.main()
