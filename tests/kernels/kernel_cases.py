"""Inputs shared by the op-library tests driven from Python (paged_ops_test.py,
cluster_attention/cluster_ops_test.py, cuda_ops_test.py): random cluster-attention inputs, and
ragged sequences written into randomly placed pages through the library's own KV append, with the
float64 attention they must give."""
import torch


def cluster_inputs(b, n, c, h, m, seed=0, extras=True):
    """q/k/v [B, H, N, C/H], idx [B, N, M], and with extras the optional inputs (pos, relative
    position weights, mask, blank token)."""
    g = torch.Generator().manual_seed(seed)
    d = c // h
    x = dict(
        q=torch.randn(b, h, n, d, generator=g), k=torch.randn(b, h, n, d, generator=g),
        v=torch.randn(b, h, n, d, generator=g),
        idx=torch.randint(0, n, (b, n, m), generator=g), scale=d ** -0.5)
    if extras:
        x.update(pos=torch.randint(0, 8, (b, n, 2), generator=g).float(),
                 pe_w=torch.randn(h, 5, generator=g) * 0.3, pe_b=torch.randn(h, generator=g),
                 mask=torch.rand(b, 1, n, m, generator=g) > 0.3,
                 blank_k=torch.randn(h, d, generator=g), blank_v=torch.randn(h, d, generator=g))
    return x


class PagedCase:
    """Random ragged sequences (lengths 1..max_len-1) in randomly placed pages (block 0 reserved),
    appended with ops.paged_kv_append on `device`; the source K/V stay on the CPU."""

    def __init__(self, ops, seed, num_seqs=5, block_size=3, hq=6, hkv=2, d=20, mode="extend",
                 dtype=torch.float32, max_len=50, device="cpu"):
        self.ops = ops
        g = torch.Generator().manual_seed(seed)
        self.block_size, self.hq, self.hkv, self.d = block_size, hq, hkv, d
        self.lens = torch.randint(1, max_len, (num_seqs,), generator=g).tolist()
        if mode == "decode":
            self.q_lens = [1] * num_seqs
        elif mode == "prefill":
            self.q_lens = list(self.lens)
        else:
            self.q_lens = [int(torch.randint(1, n + 1, (1,), generator=g)) for n in self.lens]
        blocks = [(n + block_size - 1) // block_size for n in self.lens]
        num_blocks = sum(blocks) + 2
        perm = (torch.randperm(num_blocks - 1, generator=g) + 1).tolist()
        tables = torch.zeros(num_seqs, max(blocks) + 1, dtype=torch.int32)
        i = 0
        for s, nb in enumerate(blocks):
            tables[s, :nb] = torch.tensor(perm[i:i + nb], dtype=torch.int32)
            i += nb
        self.tables_cpu = tables
        self.block_tables = tables.to(device)
        self.seq_lens = torch.tensor(self.lens, dtype=torch.int32, device=device)
        self.q_starts = torch.tensor([0] + list(torch.tensor(self.q_lens).cumsum(0)),
                                     dtype=torch.int32, device=device)
        self.k_src = [torch.randn(n, hkv, d, generator=g) for n in self.lens]
        self.v_src = [torch.randn(n, hkv, d, generator=g) for n in self.lens]
        self.q = torch.randn(sum(self.q_lens), hq, d, generator=g).to(device)
        self.k_cache = torch.zeros(num_blocks, block_size, hkv, d, dtype=dtype, device=device)
        self.v_cache = torch.zeros_like(self.k_cache)
        self.k_scale = self.v_scale = None
        if dtype in (torch.int8, torch.uint8):
            self.k_scale = torch.zeros(num_blocks, block_size, hkv, device=device)
            self.v_scale = torch.zeros_like(self.k_scale)
        for s in range(num_seqs):
            ops.paged_kv_append(self.k_src[s].to(device), self.v_src[s].to(device),
                                self.slots(s).to(device), self.k_cache, self.v_cache,
                                self.k_scale, self.v_scale)

    def slots(self, s):
        """Cache rows of sequence s's tokens (on the CPU)."""
        pos = torch.arange(self.lens[s])
        return self.tables_cpu[s].long()[pos // self.block_size] * self.block_size + \
            pos % self.block_size

    def attention(self, scale, window=0, chunk=0):
        return self.ops.paged_attention(self.q, self.k_cache, self.v_cache, self.block_tables,
                                        self.seq_lens, self.q_starts, scale, window, chunk,
                                        k_scale=self.k_scale, v_scale=self.v_scale)

    def expected(self, s, k, v, scale, window=0, chunk=0):
        """softmax(QK^T)V over contiguous K/V [len, hkv, d] of sequence s with an explicit mask,
        in float64 on the CPU: (out, lse)."""
        q0, ql, n = int(self.q_starts[s]), self.q_lens[s], self.lens[s]
        q = self.q[q0:q0 + ql].double().cpu()
        group = self.hq // self.hkv
        kk = k.double().repeat_interleave(group, 1)
        vv = v.double().repeat_interleave(group, 1)
        scores = torch.einsum("qhd,khd->hqk", q, kk) * scale
        t = torch.arange(n - ql, n).unsqueeze(1)
        p = torch.arange(n).unsqueeze(0)
        mask = p <= t
        if window > 0:
            mask &= t - p < window
        if chunk > 0:
            mask &= (p // chunk) == (t // chunk)
        scores = scores.masked_fill(~mask, float("-inf"))
        out = torch.einsum("hqk,khd->qhd", torch.softmax(scores, -1), vv)
        return out, torch.logsumexp(scores, -1).t()
