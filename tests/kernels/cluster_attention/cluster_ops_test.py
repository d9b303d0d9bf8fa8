"""libtessera_torch driven from Python: cluster attention ops against plain PyTorch references.

Usage: python3 cluster_ops_test.py /path/to/libtessera_torch.so
Exits 77 (ctest: skipped) when this interpreter has no torch.
"""
import math
import os
import sys
import unittest

import ctest_unittest  # tests/support (on PYTHONPATH under ctest)
import warnings

try:
    import torch
except ImportError:  # pragma: no cover - depends on the machine
    print("torch is not importable by", sys.executable)
    sys.exit(77)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import kernel_cases  # noqa: E402  (tests/kernels/kernel_cases.py)

LIB = sys.argv.pop(1) if len(sys.argv) > 1 else "libtessera_torch.so"
torch.ops.load_library(LIB)
ops = torch.ops.tessera


def pos_features(pos, idx):
    """[B, N, M, 5] relative-position features (dx, dy, dist, dy/dist, dx/dist)."""
    b, n, m = idx.shape
    pj = torch.gather(pos, 1, idx.reshape(b, n * m, 1).expand(b, n * m, 2)).view(b, n, m, 2)
    rel = pj - pos.unsqueeze(2)
    dx, dy = rel[..., 0], rel[..., 1]
    dist = torch.sqrt(dx * dx + dy * dy)
    safe = torch.where(dist > 0, dist, torch.ones_like(dist))
    zero = torch.zeros_like(dist)
    return torch.stack([dx, dy, dist, torch.where(dist > 0, dy / safe, zero),
                        torch.where(dist > 0, dx / safe, zero)], -1)


def reference(q, k, v, idx, scale, bias=None, pos=None, pe_w=None, pe_b=None, mask=None,
              blank_k=None, blank_v=None):
    """Cluster attention with gather + matmul + softmax (differentiable by autograd)."""
    b, h, n, d = q.shape
    m = idx.shape[-1]
    gidx = idx.reshape(b, 1, n * m, 1).expand(b, h, n * m, d)
    kg = torch.gather(k, 2, gidx).view(b, h, n, m, d)
    vg = torch.gather(v, 2, gidx).view(b, h, n, m, d)
    s = torch.matmul(q.unsqueeze(3), kg.transpose(-1, -2)).squeeze(3) * scale
    if bias is not None:
        s = s + bias
    if pe_w is not None:
        s = s + torch.einsum("bnmc,hc->bhnm", pos_features(pos, idx), pe_w)
        if pe_b is not None:
            s = s + pe_b.view(1, h, 1, 1)
    keep = torch.ones(b, h, n, m, dtype=torch.bool)
    if mask is not None:
        keep = mask.expand(b, h, n, m)
    if blank_k is not None:
        s = torch.cat([s, (q * blank_k.view(1, h, 1, d)).sum(-1, keepdim=True) * scale], -1)
        keep = torch.cat([keep, torch.ones(b, h, n, 1, dtype=torch.bool)], -1)
    dead = (~keep).all(-1, keepdim=True)
    s = torch.where(dead, torch.zeros_like(s), s.masked_fill(~keep, -math.inf))
    lse = torch.logsumexp(s, -1, keepdim=True)
    p = torch.exp(s - lse) * (~dead)
    out = torch.matmul(p[..., :m].unsqueeze(3), vg).squeeze(3)
    if blank_v is not None:
        out = out + p[..., m:] * blank_v.view(1, h, 1, d)
    return out, lse.squeeze(-1).masked_fill(dead.squeeze(-1), -math.inf)


make = kernel_cases.cluster_inputs


DIFF = ("q", "k", "v", "bias", "pe_w", "pe_b", "blank_k", "blank_v")


class ClusterAttentionOps(unittest.TestCase):
    def check_config(self, b, n, c, h, m, **kw):
        x = make(b, n, c, h, m, **kw)
        leaves = {key: val.clone().requires_grad_(True) for key, val in x.items()
                  if key in DIFF}
        args = dict(x, **leaves)
        out, lse = ops.cluster_attention(**args)
        ref_leaves = {key: val.detach().double().requires_grad_(True)
                      for key, val in leaves.items()}
        ref_args = {key: (val.double() if torch.is_tensor(val) and val.is_floating_point()
                          else val) for key, val in x.items()}
        ref_args.update(ref_leaves)
        ref_out, ref_lse = reference(**ref_args)
        torch.testing.assert_close(out.double(), ref_out.detach(), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(lse.double(), ref_lse.detach(), rtol=1e-4, atol=1e-4)
        dout = torch.randn_like(out)
        (out * dout).sum().backward()
        (ref_out * dout.double()).sum().backward()
        for key in leaves:
            torch.testing.assert_close(leaves[key].grad.double(), ref_leaves[key].grad,
                                       rtol=1e-3, atol=1e-3, msg=lambda s: f"d{key}: {s}")

    def test_seed_configs(self):
        self.check_config(1, 64, 8, 1, 32)
        self.check_config(16, 128, 16, 2, 48)
        # The large configuration (B32 N256 C256 H8 M64) on 2 batches: the float64 reference
        # gathers [B, H, N, M, D].
        self.check_config(2, 256, 256, 8, 64)

    def test_edge_cases(self):
        self.check_config(3, 13, 16, 2, 5)
        self.check_config(2, 9, 8, 1, 1, extras=False)
        self.check_config(2, 7, 16, 2, 12)

    def test_fully_masked_rows_give_zeros(self):
        x = make(2, 10, 16, 2, 4, extras=False)
        mask = torch.ones(2, 1, 10, 4, dtype=torch.bool)
        mask[:, :, ::3] = False
        out, lse = ops.cluster_attention(x["q"], x["k"], x["v"], x["idx"], mask=mask,
                                         scale=x["scale"])
        self.assertTrue(torch.all(out[:, :, ::3] == 0))
        self.assertTrue(torch.all(torch.isneginf(lse[:, :, ::3])))
        self.assertFalse(torch.isnan(out).any())

    def test_gradcheck_float64(self):
        # float64 inputs run the fp64 reference kernels, so torch.autograd.gradcheck applies at
        # full precision: every differentiable input, with and without dropout (the backward
        # must redraw the forward's mask from the seed), masks, duplicates and global mode.
        x = make(2, 7, 8, 2, 5, seed=3)
        x["idx"][:, :, 1] = x["idx"][:, :, 0]  # duplicate neighbours
        dbl = {key: (val.double() if torch.is_tensor(val) and val.is_floating_point() else val)
               for key, val in x.items()}
        bias = torch.randn(2, 2, 7, 5, dtype=torch.float64)
        names = ("q", "k", "v", "pe_w", "pe_b", "blank_k", "blank_v")
        leaves = tuple(dbl[n].clone().requires_grad_(True) for n in names)
        leaves += (bias.requires_grad_(True),)
        for p in (0.0, 0.3):
            for glob in (False, True):
                def f(q, k, v, pe_w, pe_b, blank_k, blank_v, bias):
                    idx = None if glob else dbl["idx"]
                    mask = None if glob else dbl["mask"]
                    return ops.cluster_attention(
                        q, k, v, idx, bias=None if glob else bias, pos=dbl["pos"], pe_w=pe_w,
                        pe_b=pe_b, mask=mask, blank_k=blank_k, blank_v=blank_v, scale=0.4,
                        dropout_p=p, seed=11)[0]
                args = leaves if not glob else leaves[:7] + (bias.detach(),)
                self.assertTrue(torch.autograd.gradcheck(f, args), f"p={p} global={glob}")

        g = torch.Generator().manual_seed(4)
        q = torch.randn(2, 2, 6, 8, dtype=torch.float64, generator=g, requires_grad=True)
        k = torch.randn(2, 2, 6, 8, dtype=torch.float64, generator=g, requires_grad=True)
        idx = torch.randint(0, 6, (2, 6, 4), generator=g)
        attn = torch.randn(2, 2, 6, 4, dtype=torch.float64, generator=g, requires_grad=True)
        self.assertTrue(torch.autograd.gradcheck(lambda a, b: ops.cluster_qk(a, b, idx), (q, k)))
        self.assertTrue(torch.autograd.gradcheck(lambda a, b: ops.cluster_av(a, b, idx),
                                                 (attn, k)))
        w = torch.randn(2, 3, 4, 2, dtype=torch.float64, generator=g, requires_grad=True)
        f = torch.randn(2, 6, 5, dtype=torch.float64, generator=g, requires_grad=True)
        widx = torch.randint(0, 6, (2, 3, 4), generator=g)
        self.assertTrue(torch.autograd.gradcheck(lambda a, b: ops.cluster_wf(a, b, widx), (w, f)))

    def test_gradcheck_float32_fast_kernels(self):
        # The float32 fast kernels through autograd: finite differences with a coarse step.
        x = make(1, 6, 8, 2, 4, seed=3)
        q, k, v = (x[n].clone().requires_grad_(True) for n in ("q", "k", "v"))
        bk = x["blank_k"].clone().requires_grad_(True)
        pe_w = x["pe_w"].clone().requires_grad_(True)

        def f(q, k, v, bk, pe_w):
            return ops.cluster_attention(q, k, v, x["idx"], pos=x["pos"], pe_w=pe_w,
                                         blank_k=bk, blank_v=x["blank_v"], scale=0.4)[0]

        with warnings.catch_warnings():  # "inputs are not float64": known, that is the point
            warnings.simplefilter("ignore")
            self.assertTrue(torch.autograd.gradcheck(f, (q, k, v, bk, pe_w), eps=1e-2,
                                                     atol=5e-3, rtol=1e-2))

    def test_raw_forward_backward_and_reference(self):
        x = make(2, 20, 16, 2, 6)
        out, lse = ops.cluster_attention_forward(**x)
        out_r, lse_r = ops.cluster_attention_forward(**x, reference=True)
        torch.testing.assert_close(out, out_r, rtol=1e-4, atol=1e-4)
        dout = torch.randn_like(out)
        names = ("dq", "dk", "dv", "dbias", "dpe_w", "dpe_b", "dblank_k", "dblank_v")
        for det in (False, True):
            g = ops.cluster_attention_backward(dout, out, lse, **x, deterministic=det)
            gr = ops.cluster_attention_backward(dout, out, lse, **x, reference=True)
            for name, a, b in zip(names, g, gr):
                torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3, msg=lambda s: name + s)
        self.assertEqual(g[3].numel(), 0)  # no bias given: empty dbias

    def test_dropout(self):
        x = make(2, 16, 16, 2, 8, extras=False)
        base, _ = ops.cluster_attention(**x)
        same, _ = ops.cluster_attention(**x, dropout_p=0.0, seed=7)
        self.assertTrue(torch.equal(base, same))
        a, _ = ops.cluster_attention(**x, dropout_p=0.3, seed=7)
        b, _ = ops.cluster_attention(**x, dropout_p=0.3, seed=7)
        c, _ = ops.cluster_attention(**x, dropout_p=0.3, seed=8)
        self.assertTrue(torch.equal(a, b))
        self.assertFalse(torch.equal(a, c))

    def test_primitives(self):
        g = torch.Generator().manual_seed(5)
        b, h, n, m, d = 2, 3, 17, 6, 24
        q = torch.randn(b, h, n, d, generator=g, requires_grad=True)
        k = torch.randn(b, h, n, d, generator=g, requires_grad=True)
        idx = torch.randint(0, n, (b, n, m), generator=g, dtype=torch.int32)
        gidx = idx.long().reshape(b, 1, n * m, 1).expand(b, h, n * m, d)
        attn = torch.softmax(ops.cluster_qk(q, k, idx), -1)
        out = ops.cluster_av(attn, k, idx)
        kg = torch.gather(k, 2, gidx).view(b, h, n, m, d)
        attn_r = torch.softmax((q.unsqueeze(3) * kg).sum(-1), -1)
        out_r = (attn_r.unsqueeze(-1) * kg).sum(3)
        torch.testing.assert_close(out, out_r, rtol=1e-4, atol=1e-4)
        gq, gk = torch.autograd.grad(out.sum(), (q, k))
        gq_r, gk_r = torch.autograd.grad(out_r.sum(), (q, k))
        torch.testing.assert_close(gq, gq_r, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(gk, gk_r, rtol=1e-3, atol=1e-3)
        w = torch.randn(b, 5, m, 4, generator=g, requires_grad=True)
        f = torch.randn(b, n, 7, generator=g, requires_grad=True)
        widx = torch.randint(0, n, (b, 5, m), generator=g)
        y = ops.cluster_wf(w, f, widx)
        fg = torch.gather(f, 1, widx.reshape(b, 5 * m, 1).expand(b, 5 * m, 7)).view(b, 5, m, 7)
        y_r = torch.einsum("bnmi,bnmc->bnic", w, fg)
        torch.testing.assert_close(y, y_r, rtol=1e-4, atol=1e-4)
        gw, gf = torch.autograd.grad((y * y).sum(), (w, f))
        gw_r, gf_r = torch.autograd.grad((y_r * y_r).sum(), (w, f))
        torch.testing.assert_close(gw, gw_r, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(gf, gf_r, rtol=1e-3, atol=1e-3)

    def test_neighbors(self):
        pos = torch.rand(2, 61, 2, generator=torch.Generator().manual_seed(9))
        idx, mask, members, member_mask, cluster_of, centroids, nearest = \
            ops.cluster_neighbors(pos, 3)
        self.assertEqual(tuple(idx.shape), (2, 61, 24))
        self.assertEqual(int(member_mask.sum()), 2 * 61)
        expect = torch.cdist(centroids.double(), centroids.double()).argsort(-1)[..., :3]
        self.assertTrue(torch.equal(nearest, expect))
        self.assertTrue(torch.equal(ops.nearest_clusters(centroids, 3), nearest))
        out, lse = ops.cluster_attention(torch.randn(2, 2, 61, 8), torch.randn(2, 2, 61, 8),
                                         torch.randn(2, 2, 61, 8), idx, mask=mask.unsqueeze(1))
        self.assertTrue(torch.isfinite(lse).all())

    def test_errors(self):
        x = make(2, 8, 16, 2, 3, extras=False)
        bad = x["idx"].clone()
        bad[0, 0, 0] = 8
        with self.assertRaisesRegex(RuntimeError, r"idx values must lie in \[0, 8\)"):
            ops.cluster_attention(x["q"], x["k"], x["v"], bad)
        with self.assertRaisesRegex(RuntimeError, "dtypes must match"):
            ops.cluster_attention(x["q"], x["k"].half(), x["v"], x["idx"])
        with self.assertRaisesRegex(RuntimeError, "M > 0"):
            ops.cluster_attention(x["q"], x["k"], x["v"], torch.zeros(2, 8, 0, dtype=torch.long))


if __name__ == "__main__":
    print("torch", torch.__version__, "library", LIB)
    ctest_unittest.main()  # exit 77 (ctest: skipped) when a test was skipped
