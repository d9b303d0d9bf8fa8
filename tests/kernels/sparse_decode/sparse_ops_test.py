"""Drives torch.ops.tessera.sparse_paged_decode from Python and checks it against plain PyTorch in
float64: the listed tokens gathered from the pages, softmax(q K^T * scale) V and its log-sum-exp.
Page formats float32 / float16 / int8 (with scales), query float32 / bfloat16, empty lists,
duplicate entries, the fp64 reference path, explicit splits, and bad lists as errors.

Usage: python3 sparse_ops_test.py path/to/libtessera_torch.so
"""
import math
import sys
import unittest

import torch

LIB = sys.argv.pop(1) if len(sys.argv) > 1 else "libtessera_torch.so"
torch.ops.load_library(LIB)
ops = torch.ops.tessera


class Case:
    def __init__(self, seed, seqs=3, bs=5, hkv=2, group=3, d=24, max_len=90, cache=torch.float32):
        g = torch.Generator().manual_seed(seed)
        self.bs, self.hkv, self.group, self.d = bs, hkv, group, d
        self.lens = torch.randint(1, max_len + 1, (seqs,), generator=g, dtype=torch.int32)
        blocks = [(int(n) + bs - 1) // bs for n in self.lens]
        self.num_blocks = sum(blocks) + 2
        perm = torch.randperm(self.num_blocks - 1, generator=g) + 1  # block 0 is the null block
        self.block_tables = torch.zeros(seqs, max(blocks), dtype=torch.int32)
        i = 0
        for s, nb in enumerate(blocks):
            self.block_tables[s, :nb] = perm[i:i + nb]
            i += nb
        k = torch.randn(self.num_blocks, bs, hkv, d, generator=g)
        v = torch.randn(self.num_blocks, bs, hkv, d, generator=g)
        self.k_scale = self.v_scale = None
        if cache == torch.int8:
            self.k_scale = k.abs().amax(-1) / 127 + 1e-6
            self.v_scale = v.abs().amax(-1) / 127 + 1e-6
            self.k_cache = (k / self.k_scale.unsqueeze(-1)).round().clamp(-127, 127).to(torch.int8)
            self.v_cache = (v / self.v_scale.unsqueeze(-1)).round().clamp(-127, 127).to(torch.int8)
            self.k_true = self.k_cache.double() * self.k_scale.double().unsqueeze(-1)
            self.v_true = self.v_cache.double() * self.v_scale.double().unsqueeze(-1)
        else:
            self.k_cache, self.v_cache = k.to(cache), v.to(cache)
            self.k_true, self.v_true = self.k_cache.double(), self.v_cache.double()
        self.q = torch.randn(seqs, hkv * group, d, generator=g)
        self.g = g

    def lists(self, want, duplicates=False):
        seqs = len(self.lens)
        idx = torch.full((seqs, self.hkv, want), -1, dtype=torch.int32)
        counts = torch.zeros(seqs, self.hkv, dtype=torch.int32)
        for s in range(seqs):
            for h in range(self.hkv):
                n = int(self.lens[s])
                sel = torch.randperm(n, generator=self.g)[:want]
                if duplicates and len(sel) > 1:
                    sel = torch.cat([sel, sel[:1]])[:want]
                idx[s, h, :len(sel)] = sel.int()
                counts[s, h] = len(sel)
        return idx, counts

    def expected(self, idx, counts, scale, q=None):
        q = (self.q if q is None else q).double()
        seqs, hq = q.shape[0], q.shape[1]
        out = torch.zeros(seqs, hq, self.d, dtype=torch.float64)
        lse = torch.full((seqs, hq), -math.inf, dtype=torch.float64)
        for s in range(seqs):
            for h in range(hq):
                kh = h // self.group
                pos = idx[s, kh, :int(counts[s, kh])].long()
                if len(pos) == 0:
                    continue
                blocks = self.block_tables[s].long()[pos // self.bs]
                slots = pos % self.bs
                keys = self.k_true[blocks, slots, kh]
                vals = self.v_true[blocks, slots, kh]
                logits = keys @ q[s, h] * scale
                out[s, h] = torch.softmax(logits, 0) @ vals
                lse[s, h] = torch.logsumexp(logits, 0)
        return out, lse


class SparseOpsTest(unittest.TestCase):
    def check(self, c, idx, counts, q=None, tol=1e-5, **kw):
        scale = 1 / math.sqrt(c.d)
        out, lse = ops.sparse_paged_decode(c.q if q is None else q, c.k_cache, c.v_cache,
                                           c.block_tables, c.lens, idx, counts, scale,
                                           c.k_scale, c.v_scale, **kw)
        want_out, want_lse = c.expected(idx, counts, scale, None if q is None else q.float())
        torch.testing.assert_close(out.double(), want_out, atol=tol, rtol=tol)
        torch.testing.assert_close(lse.double(), want_lse, atol=tol, rtol=tol)

    def test_matches_pytorch_for_every_page_format(self):
        for seed, cache in enumerate((torch.float32, torch.float16, torch.int8)):
            c = Case(seed, cache=cache)
            idx, counts = c.lists(40)
            self.check(c, idx, counts)
            self.check(c, idx, counts, reference=True)
            self.check(c, idx, counts, splits=3)

    def test_bfloat16_query(self):
        c = Case(7)
        idx, counts = c.lists(30)
        q = c.q.to(torch.bfloat16)
        # Output comes back in bfloat16: compare at its precision.
        self.check(c, idx, counts, q=q, tol=1e-2)

    def test_empty_lists_and_duplicates(self):
        c = Case(11)
        idx, counts = c.lists(50, duplicates=True)
        counts[0, 1] = 0
        counts[2, 0] = 0
        self.check(c, idx, counts)
        scale = 1 / math.sqrt(c.d)
        out, lse = ops.sparse_paged_decode(c.q, c.k_cache, c.v_cache, c.block_tables, c.lens, idx,
                                           counts, scale)
        g = c.group
        self.assertTrue(torch.all(out[0, g:2 * g] == 0))
        self.assertTrue(torch.all(torch.isneginf(lse[0, g:2 * g])))

    def test_bad_lists_are_errors(self):
        c = Case(13)
        idx, counts = c.lists(10)
        scale = 0.2
        bad = idx.clone()
        bad[1, 0, 2] = int(c.lens[1])
        with self.assertRaisesRegex(RuntimeError, r"idx\[1\]\[0\]\[2\]=\d+ is outside"):
            ops.sparse_paged_decode(c.q, c.k_cache, c.v_cache, c.block_tables, c.lens, bad,
                                    counts, scale)
        over = counts.clone()
        over[0, 1] = 11
        with self.assertRaisesRegex(RuntimeError, r"counts\[0\]\[1\]=11"):
            ops.sparse_paged_decode(c.q, c.k_cache, c.v_cache, c.block_tables, c.lens, idx, over,
                                    scale)
        with self.assertRaisesRegex(RuntimeError, "idx must be int32"):
            ops.sparse_paged_decode(c.q, c.k_cache, c.v_cache, c.block_tables, c.lens,
                                    idx.long(), counts, scale)


if __name__ == "__main__":
    unittest.main()
