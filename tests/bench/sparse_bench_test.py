"""Runs `tessera bench sparse --quick --json` as a user would and checks its report: every cell the
issue asks for (families x contexts x budgets x methods, with recall, error and bytes), the oracle's
recall bounds every method's (it takes the best `budget` tokens), the cluster method's recall is at
least Quest's and mean+std's on every family at 32K / 2K, incremental clustering stays within 2% of
re-clustering from scratch, and scripts/plot_sparse.py draws the result as a PNG.

Usage: python3 sparse_bench_test.py   (TESSERA_BIN, TESSERA_SOURCE_DIR from the ctest environment)
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

BIN = os.environ["TESSERA_BIN"]
SRC = os.environ["TESSERA_SOURCE_DIR"]
FAMILIES = {"sinks", "rope", "outliers", "ood", "scattered", "needles", "flat"}
METHODS = {"cluster", "quest", "meanstd", "sink_window", "oracle"}


class SparseBenchTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        run = subprocess.run([BIN, "bench", "sparse", "--quick", "--json"], capture_output=True,
                             text=True, timeout=300)
        if run.returncode != 0:
            raise AssertionError(f"bench failed ({run.returncode}): {run.stderr[-2000:]}")
        cls.text = run.stdout
        cls.data = json.loads(run.stdout)
        print(f"quick bench: {cls.data['seconds']:.1f} s, speedup at 32K/2K "
              f"{cls.data['speedup_vs_dense_32k_2k']:.2f}x", file=sys.stderr)

    def test_every_cell_is_reported(self):
        cells = self.data["cells"]
        seen = set()
        for c in cells:
            for key in ("family", "context", "budget", "method", "mass_recall", "rel_error",
                        "kv_bytes_per_step", "topk_hit", "selection_bytes_per_step",
                        "selection_us"):
                self.assertIn(key, c)
            self.assertGreaterEqual(c["mass_recall"], 0.0)
            self.assertLessEqual(c["mass_recall"], 1.0 + 1e-6)
            seen.add((c["family"], c["context"], c["budget"], c["method"]))
        contexts = {c["context"] for c in cells}
        budgets = {c["budget"] for c in cells}
        self.assertEqual({c["family"] for c in cells}, FAMILIES)
        self.assertEqual({c["method"] for c in cells}, METHODS)
        self.assertIn(32768, contexts)
        self.assertIn(2048, budgets)
        self.assertEqual(len(seen), len(FAMILIES) * len(METHODS) * len(contexts) * len(budgets))
        self.assertGreater(self.data["dense_kv_bytes_32k"], 0)
        self.assertGreater(self.data["speedup_vs_dense_32k_2k"], 0)
        needles = [c for c in cells if c["family"] == "needles"]
        self.assertTrue(all(c["needle_hits"] is not None for c in needles))

    def test_oracle_bounds_every_method(self):
        best = {}
        for c in self.data["cells"]:
            if c["method"] == "oracle":
                best[(c["family"], c["context"], c["budget"])] = c["mass_recall"]
        for c in self.data["cells"]:
            with self.subTest(cell=(c["family"], c["context"], c["budget"], c["method"])):
                self.assertLessEqual(c["mass_recall"],
                                     best[(c["family"], c["context"], c["budget"])] + 1e-6)
                self.assertAlmostEqual(c["tokens_per_list"], c["budget"], delta=0.5)

    def test_cluster_recall_and_bytes_at_32k_2k(self):
        acc = self.data["acceptance"]
        for fam, r in acc["recall_32k_2k"].items():
            with self.subTest(family=fam):
                self.assertGreaterEqual(r["cluster"], r["quest"])
                self.assertGreaterEqual(r["cluster"], r["meanstd"])
        self.assertEqual(set(acc["recall_32k_2k"]), FAMILIES)
        self.assertLessEqual(self.data["kv_bytes_ratio_32k_2k"], 1 / 8)

    def test_incremental_clustering_within_two_percent(self):
        self.assertTrue(self.data["incremental"])
        for r in self.data["incremental"]:
            self.assertTrue(r["incremental_equals_single_pass"])
            self.assertLessEqual(r["relative_gap"], 0.02)

    def test_plot(self):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            self.skipTest("matplotlib is not installed (Debian: python3-matplotlib)")
        with tempfile.TemporaryDirectory() as tmp:
            js, png = os.path.join(tmp, "sparse.json"), os.path.join(tmp, "sparse.png")
            with open(js, "w") as f:
                f.write(self.text)
            subprocess.run([sys.executable, os.path.join(SRC, "scripts", "plot_sparse.py"), js, png],
                           check=True, timeout=120)
            with open(png, "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")


if __name__ == "__main__":
    unittest.main()
