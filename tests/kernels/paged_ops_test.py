"""Drives the paged-attention family of libtessera_torch from Python and checks it against plain
PyTorch: paged attention (varlen and decode), KV append into fp32 / int8 / fp8 pages, KV
quantisation and the LSE merge.

Usage: python3 paged_ops_test.py path/to/libtessera_torch.so
"""
import math
import sys
import unittest

import ctest_unittest  # tests/support (on PYTHONPATH under ctest)

import torch

import kernel_cases

LIB = sys.argv.pop(1) if len(sys.argv) > 1 else "libtessera_torch.so"
torch.ops.load_library(LIB)
ops = torch.ops.tessera


def e4m3_values():
    """The 256 e4m3fn code values, from the format's definition."""
    vals = []
    for c in range(256):
        e, m = (c >> 3) & 15, c & 7
        v = math.ldexp(m, -9) if e == 0 else math.ldexp(8 + m, e - 10)
        if e == 15 and m == 7:
            v = float("nan")
        vals.append(-v if c & 0x80 else v)
    return torch.tensor(vals, dtype=torch.float64)


def e4m3_encode(y):
    """Nearest e4m3 code by exhaustive search, ties to the even code, saturating at 448."""
    table = e4m3_values()[:0x7F]  # non-negative finite codes 0..0x7e
    a = y.abs().double().clamp(max=448.0).flatten()
    err = (a.unsqueeze(1) - table.unsqueeze(0)).abs()
    best = err.min(dim=1, keepdim=True).values
    codes = torch.arange(0x7F)
    # Among the (at most two) nearest codes prefer the even one.
    cand = torch.where(err == best, codes.unsqueeze(0), torch.full_like(err, 1000, dtype=torch.long))
    even = torch.where(cand % 2 == 0, cand, torch.full_like(cand, 1000)).min(dim=1).values
    code = torch.where(even < 1000, even, cand.min(dim=1).values)
    sign = (torch.signbit(y.flatten())).long() * 0x80
    return (code | sign).to(torch.uint8).view(y.shape)


def PagedCase(seed, **kw):
    return kernel_cases.PagedCase(ops, seed, **kw)


class PagedOpsTest(unittest.TestCase):
    def test_paged_attention_matches_pytorch(self):
        seed = 0
        for mode in ("decode", "extend", "prefill"):
            for window, chunk in ((0, 0), (5, 0), (0, 4), (9, 6)):
                seed += 1
                c = PagedCase(seed, mode=mode)
                scale = 1 / math.sqrt(c.d)
                out, lse = ops.paged_attention(c.q, c.k_cache, c.v_cache, c.block_tables,
                                               c.seq_lens, c.q_starts, scale, window, chunk)
                for s in range(len(c.lens)):
                    want, want_lse = c.expected(s, c.k_src[s], c.v_src[s], scale, window, chunk)
                    q0, ql = int(c.q_starts[s]), c.q_lens[s]
                    torch.testing.assert_close(out[q0:q0 + ql].double(), want, rtol=1e-4,
                                               atol=1e-4)
                    torch.testing.assert_close(lse[q0:q0 + ql].double(), want_lse, rtol=1e-4,
                                               atol=1e-4)
                if mode == "decode":
                    d_out, d_lse = ops.paged_decode(c.q, c.k_cache, c.v_cache, c.block_tables,
                                                    c.seq_lens, scale, window, chunk)
                    self.assertTrue(torch.equal(d_out, out))

    def test_int8_pages_follow_the_convention(self):
        c = PagedCase(11, dtype=torch.int8, block_size=16, hq=8, hkv=4, d=32)
        for s in range(len(c.lens)):
            rows = c.slots(s)
            x = c.k_src[s]
            amax = x.abs().amax(-1, keepdim=True)
            scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
            want = torch.round(x / scale).clamp(-127, 127).to(torch.int8)
            got = c.k_cache.view(-1, c.hkv, c.d)[rows]
            self.assertTrue(torch.equal(got, want))
            self.assertTrue(torch.equal(c.k_scale.view(-1, c.hkv)[rows], scale.squeeze(-1)))
        scale = 1 / math.sqrt(c.d)
        out, _ = ops.paged_attention(c.q, c.k_cache, c.v_cache, c.block_tables, c.seq_lens,
                                     c.q_starts, scale, k_scale=c.k_scale, v_scale=c.v_scale)
        for s in range(len(c.lens)):
            rows = c.slots(s)
            k = c.k_cache.view(-1, c.hkv, c.d)[rows].float() * c.k_scale.view(-1, c.hkv)[rows, :, None]
            v = c.v_cache.view(-1, c.hkv, c.d)[rows].float() * c.v_scale.view(-1, c.hkv)[rows, :, None]
            want, _ = c.expected(s, k, v, scale)
            q0, ql = int(c.q_starts[s]), c.q_lens[s]
            torch.testing.assert_close(out[q0:q0 + ql].double(), want, rtol=1e-4, atol=1e-4)
            exact, _ = c.expected(s, c.k_src[s], c.v_src[s], scale)
            self.assertLess((out[q0:q0 + ql].double() - exact).abs().max().item(), 0.03)

    def test_fp8_quantisation_matches_exhaustive_encoder(self):
        x = torch.randn(40, 3, 24, generator=torch.Generator().manual_seed(5)) * 7
        q, scale = ops.quantize_kv(x, "fp8_e4m3")
        self.assertEqual(q.dtype, torch.uint8)
        amax = x.abs().amax(-1)
        torch.testing.assert_close(scale, amax / 448, rtol=0, atol=0)
        want = e4m3_encode(x / scale.unsqueeze(-1))
        self.assertTrue(torch.equal(q, want))
        back = ops.dequantize_kv(q, scale)
        torch.testing.assert_close(back.double(),
                                   e4m3_values()[q.long()] * scale.unsqueeze(-1).double(),
                                   rtol=1e-6, atol=0)
        # fp8 pages read by attention equal the standalone quantiser's output.
        c = PagedCase(12, dtype=torch.uint8, block_size=16)
        rows = c.slots(0)
        q0, s0 = ops.quantize_kv(c.v_src[0], "fp8_e4m3")
        self.assertTrue(torch.equal(c.v_cache.view(-1, c.hkv, c.d)[rows], q0))
        self.assertTrue(torch.equal(c.v_scale.view(-1, c.hkv)[rows], s0))

    def test_int8_round_trip(self):
        x = torch.randn(64, 4, 16) * 3
        q, scale = ops.quantize_kv(x, "int8")
        back = ops.dequantize_kv(q, scale)
        self.assertTrue(((back - x).abs() <= scale.unsqueeze(-1) * 0.5 * (1 + 1e-6)).all())

    def test_merge_attention_states(self):
        g = torch.Generator().manual_seed(3)
        outs = torch.randn(4, 6, 5, 16, generator=g)
        lses = torch.randn(4, 6, 5, generator=g) * 3
        lses[1, 2] = float("-inf")
        lses[:, 3, 4] = float("-inf")
        out, lse = ops.merge_attention_states(outs, lses)
        want_lse = torch.logsumexp(lses.double(), 0)
        w = torch.exp(lses.double() - want_lse).nan_to_num(0.0)
        want = (w.unsqueeze(-1) * outs.double()).sum(0)
        torch.testing.assert_close(lse.double(), want_lse, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
        self.assertTrue(torch.equal(out[3, 4], torch.zeros(16)))

    def test_bad_input_raises(self):
        c = PagedCase(13)
        bad = c.block_tables.clone()
        bad[0, 0] = 10_000
        with self.assertRaisesRegex(RuntimeError, r"block_tables\[0\]\[0\]=10000"):
            ops.paged_attention(c.q, c.k_cache, c.v_cache, bad, c.seq_lens, c.q_starts, 1.0)
        with self.assertRaisesRegex(RuntimeError, "format must be"):
            ops.quantize_kv(c.q, "int4")


if __name__ == "__main__":
    ctest_unittest.main()  # exit 77 (ctest: skipped) when a test was skipped
