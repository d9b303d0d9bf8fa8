"""The op library's CUDA paths, driven from Python with a CUDA build of PyTorch: every op on CUDA
tensors against the same op on the CPU (whose kernels the CPU tests check against float64
references) and, for attention, against a float64 PyTorch formula. This goes through what the C++
CUDA tests do not: the dispatch by device, torch's current CUDA stream, autograd on CUDA, and
tensors allocated by PyTorch's caching allocator.

Usage: python3 cuda_ops_test.py path/to/libtessera_torch.so
Skipped (exit 77, which ctest reports as skipped) when torch sees no CUDA device.
TESSERA_CUDA_OPS_DEVICE=cpu runs the CPU against itself: a check of this file's own plumbing on a
machine without a GPU, not a test of anything else.
"""
import math
import os
import sys
import unittest

import ctest_unittest  # tests/support (on PYTHONPATH under ctest)

import torch

import kernel_cases

LIB = sys.argv.pop(1) if len(sys.argv) > 1 else "libtessera_torch.so"
torch.ops.load_library(LIB)
ops = torch.ops.tessera
DEV = os.environ.get("TESSERA_CUDA_OPS_DEVICE", "cuda")
HAVE_GPU = DEV == "cpu" or torch.cuda.is_available()


def close(test, got, want, tol, what):
    """got (any device) equals want within tol, and got has no NaN where want has none."""
    got = got.detach().double().cpu()
    want = want.detach().double().cpu()
    test.assertEqual(got.shape, want.shape, what)
    finite = torch.isfinite(want)
    test.assertTrue(torch.equal(torch.isfinite(got), finite), f"{what}: non-finite entries differ")
    err = (got[finite] - want[finite]).abs().max().item() if finite.any() else 0.0
    test.assertLessEqual(err, tol, f"{what}: max abs error {err:.3g} > {tol}")


cluster_inputs = kernel_cases.cluster_inputs


def to(x, device, dtype=None):
    out = {}
    for k, v in x.items():
        if torch.is_tensor(v):
            v = v.to(device)
            if dtype is not None and v.is_floating_point() and k != "pos":
                v = v.to(dtype)
        out[k] = v
    return out


DIFF = ("q", "k", "v", "pe_w", "pe_b", "blank_k", "blank_v")


@unittest.skipUnless(HAVE_GPU, "no CUDA device")
class ClusterAttentionCuda(unittest.TestCase):
    def run_both(self, x, dtype=torch.float32, **kw):
        results = []
        for device in ("cpu", DEV):
            args = to(x, device, dtype if device == DEV else torch.float32)
            leaves = {k: args[k].clone().requires_grad_(True) for k in DIFF if k in args}
            args.update(leaves)
            out, lse = ops.cluster_attention(**args, **kw)
            dout = torch.linspace(-1, 1, out.numel(), device=device).view_as(out).to(out.dtype)
            (out * dout).sum().backward()
            results.append((out, lse, {k: v.grad for k, v in leaves.items()}))
        return results

    def test_forward_and_backward_match_cpu(self):
        for cfg in ((1, 64, 8, 1, 32), (4, 128, 16, 2, 48), (2, 256, 256, 8, 64), (3, 13, 16, 2, 5)):
            for extras in (True, False):
                x = cluster_inputs(*cfg, seed=sum(cfg), extras=extras)
                (co, cl, cg), (go, gl, gg) = self.run_both(x)
                what = f"config {cfg} extras={extras}"
                close(self, go, co, 1e-4, what + " out")
                close(self, gl, cl, 1e-4, what + " lse")
                for k in cg:
                    close(self, gg[k], cg[k], 1e-3, what + f" d{k}")

    def test_dropout_mask_is_the_same_on_both_devices(self):
        x = cluster_inputs(2, 32, 16, 2, 8, seed=7)
        (co, _, cg), (go, _, gg) = self.run_both(x, dropout_p=0.25, seed=1234)
        close(self, go, co, 1e-4, "dropout out")
        close(self, gg["v"], cg["v"], 1e-3, "dropout dv")

    def test_half_precision(self):
        for dtype, tol in ((torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)):
            x = cluster_inputs(2, 64, 32, 2, 16, seed=3)
            (co, cl, _), (go, gl, _) = self.run_both(x, dtype=dtype)
            self.assertEqual(go.dtype, dtype)
            close(self, go, co, tol, f"{dtype} out")

    @unittest.skipUnless(DEV == "cuda", "streams need CUDA")
    def test_runs_on_the_current_stream(self):
        # Work queued on a side stream, the op on that stream, no explicit synchronisation in
        # between: a kernel on the default stream would read q before it is written.
        x = cluster_inputs(2, 128, 64, 4, 32, seed=9, extras=False)
        want, _ = ops.cluster_attention(**x)
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            args = to(x, DEV)
            q = torch.zeros_like(args["q"])
            torch.cuda._sleep(10_000_000)
            q.copy_(args["q"])
            args["q"] = q
            out, _ = ops.cluster_attention(**args)
        s.synchronize()
        close(self, out, want, 1e-4, "side-stream out")

    def test_primitives_match_cpu(self):
        g = torch.Generator().manual_seed(4)
        b, h, n, m, d = 2, 3, 40, 9, 16
        q, k, v = (torch.randn(b, h, n, d, generator=g) for _ in range(3))
        idx = torch.randint(0, n, (b, n, m), generator=g)
        attn = torch.randn(b, h, n, m, generator=g)
        close(self, ops.cluster_qk(q.to(DEV), k.to(DEV), idx.to(DEV)), ops.cluster_qk(q, k, idx),
              1e-4, "qk")
        close(self, ops.cluster_av(attn.to(DEV), v.to(DEV), idx.to(DEV)),
              ops.cluster_av(attn, v, idx), 1e-4, "av")

    def test_bad_index_is_an_error_not_a_crash(self):
        x = to(cluster_inputs(1, 16, 8, 1, 4, seed=2, extras=False), DEV)
        x["idx"][0, 0, 0] = 16
        with self.assertRaisesRegex(RuntimeError, "idx"):
            ops.cluster_attention(**x)
        # The device is still usable afterwards.
        self.assertEqual(torch.ones(3, device=DEV).sum().item(), 3.0)


def Paged(seed, device, kv_dtype=torch.float32, decode=False):
    """Sequences of up to 300 tokens in 16-token pages, 8 query / 2 KV heads of 64."""
    return kernel_cases.PagedCase(ops, seed, block_size=16, hq=8, hkv=2, d=64,
                                  mode="decode" if decode else "extend", dtype=kv_dtype,
                                  max_len=300, device=device)


@unittest.skipUnless(HAVE_GPU, "no CUDA device")
class PagedCuda(unittest.TestCase):
    def test_pages_written_on_cuda_equal_the_cpu_pages(self):
        for kv_dtype in (torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.uint8):
            cpu = Paged(1, "cpu", kv_dtype)
            gpu = Paged(1, DEV, kv_dtype)
            self.assertTrue(torch.equal(gpu.k_cache.cpu(), cpu.k_cache), f"{kv_dtype} k pages")
            self.assertTrue(torch.equal(gpu.v_cache.cpu(), cpu.v_cache), f"{kv_dtype} v pages")
            if cpu.k_scale is not None:
                close(self, gpu.k_scale, cpu.k_scale, 0, f"{kv_dtype} k scales")

    def test_attention_matches_cpu_and_float64(self):
        seed = 10
        for decode in (False, True):
            for window, chunk in ((0, 0), (37, 0), (0, 48), (100, 64)):
                seed += 1
                cpu = Paged(seed, "cpu", decode=decode)
                gpu = Paged(seed, DEV, decode=decode)
                scale = 1 / math.sqrt(cpu.d)
                co, cl = cpu.attention(scale, window, chunk)
                go, gl = gpu.attention(scale, window, chunk)
                what = f"decode={decode} window={window} chunk={chunk}"
                close(self, go, co, 1e-4, what + " out vs cpu")
                close(self, gl, cl, 1e-4, what + " lse vs cpu")
                for s in range(len(cpu.lens)):
                    q0, ql = int(cpu.q_starts[s]), cpu.q_lens[s]
                    want, _ = gpu.expected(s, gpu.k_src[s], gpu.v_src[s], scale, window, chunk)
                    close(self, go[q0:q0 + ql], want, 1e-4, what + f" seq {s} vs float64")
                if decode:
                    do, _ = ops.paged_decode(gpu.q, gpu.k_cache, gpu.v_cache, gpu.block_tables,
                                             gpu.seq_lens, scale, window, chunk)
                    close(self, do, co, 1e-4, what + " paged_decode vs cpu")

    def test_quantised_pages(self):
        for kv_dtype, tol in ((torch.int8, 0.03), (torch.uint8, 0.2)):
            cpu = Paged(30, "cpu", kv_dtype)
            gpu = Paged(30, DEV, kv_dtype)
            scale = 1 / math.sqrt(cpu.d)
            co, _ = cpu.attention(scale)
            go, _ = gpu.attention(scale)
            close(self, go, co, 1e-4, f"{kv_dtype} vs cpu")
            for s in range(len(cpu.lens)):
                q0, ql = int(cpu.q_starts[s]), cpu.q_lens[s]
                want, _ = gpu.expected(s, gpu.k_src[s], gpu.v_src[s], scale)
                close(self, go[q0:q0 + ql], want, tol, f"{kv_dtype} vs exact")

    def test_quantize_dequantize_and_merge_match_cpu(self):
        g = torch.Generator().manual_seed(8)
        x = torch.randn(300, 4, 64, generator=g) * 5
        for fmt in ("int8", "fp8_e4m3"):
            cq, cs = ops.quantize_kv(x, fmt)
            gq, gs = ops.quantize_kv(x.to(DEV), fmt)
            self.assertTrue(torch.equal(gq.cpu(), cq), fmt)
            close(self, gs, cs, 0, fmt + " scales")
            close(self, ops.dequantize_kv(gq, gs), ops.dequantize_kv(cq, cs), 0, fmt + " back")
        outs = torch.randn(4, 6, 5, 64, generator=g)
        lses = torch.randn(4, 6, 5, generator=g) * 3
        lses[1, 2] = float("-inf")
        lses[:, 3, 4] = float("-inf")
        co, cl = ops.merge_attention_states(outs, lses)
        go, gl = ops.merge_attention_states(outs.to(DEV), lses.to(DEV))
        close(self, go, co, 1e-5, "merge out")
        close(self, gl, cl, 1e-5, "merge lse")


if __name__ == "__main__":
    if not HAVE_GPU:
        print("skipped: torch sees no CUDA device")
    ctest_unittest.main()  # exit 77 (ctest: skipped) when a test was skipped
