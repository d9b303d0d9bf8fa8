#!/usr/bin/env python3
"""Independent reference for the digits cluster-attention classifier (runtime/training/
digits_model.h): the same network written from the formulas in plain PyTorch (float64; neighbours
gathered by index, the relative-position bias, mask and blank token written out, softmax over
M + 1 logits), fed the weights and batch that the C++ test wrote, must give the loss and every
parameter gradient that Tessera's fused kernels gave, within 1e-4.

Usage: digits_reference.py DIR   (DIR holds model.safetensors, batch.safetensors,
       grads.safetensors and config.json)
"""
import json
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32,
          "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors(path):
    """A small safetensors reader of our own (the format: u64 header length, JSON, raw data)."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        arr = np.frombuffer(blob[base + a:base + b], dtype=DTYPES[e["dtype"]]).reshape(e["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out


def forward(P, cfg, x, idx, mask, pos):
    C, H = cfg["dim"], cfg["heads"]
    D = C // H
    B, N = x.shape
    M = idx.shape[2]
    scale = D ** -0.5
    S = cfg["image_size"]
    # The stem: each pixel's 3x3 neighbourhood (zero padded, row-major taps), as a convolution.
    patches = F.unfold((x / 16.0).view(B, 1, S, S), 3, padding=1).transpose(1, 2)  # [B, N, 9]
    h = patches @ P["patch_embed.weight"].T + P["patch_embed.bias"] + P["pos_embed"]
    bidx = torch.arange(B)[:, None, None]
    # Relative-position features of every (query n, neighbour m): (dx, dy, dist, dy/d, dx/d).
    d = pos[bidx, idx] - pos[:, :, None, :]  # [B, N, M, 2], key - query
    dx, dy = d[..., 0], d[..., 1]
    dist = torch.sqrt(dx * dx + dy * dy)
    safe = torch.where(dist > 0, dist, torch.ones_like(dist))
    ry = torch.where(dist > 0, dy / safe, torch.zeros_like(dist))
    rx = torch.where(dist > 0, dx / safe, torch.zeros_like(dist))
    feat = torch.stack([dx, dy, dist, ry, rx], -1)  # [B, N, M, 5]
    for l in range(cfg["depth"]):
        p = f"blocks.{l}."
        a = F.layer_norm(h, (C,), P[p + "norm1.weight"], P[p + "norm1.bias"], eps=1e-5)

        def proj(name):
            return (a @ P[p + f"attn.{name}.weight"].T + P[p + f"attn.{name}.bias"]).view(B, N, H, D)

        q, k, v = proj("q"), proj("k"), proj("v")  # [B, N, H, D]
        kn, vn = k[bidx, idx], v[bidx, idx]  # [B, N, M, H, D]
        s = scale * torch.einsum("bnhd,bnmhd->bhnm", q, kn)
        s = s + torch.einsum("bnmf,hf->bhnm", feat, P[p + "attn.pos_bias.weight"])
        s = s + P[p + "attn.pos_bias.bias"][None, :, None, None]
        s = s.masked_fill(~mask[:, None], float("-inf"))
        blank = scale * torch.einsum("bnhd,hd->bhn", q, P[p + "attn.blank_k"])
        prob = torch.softmax(torch.cat([s, blank[..., None]], -1), -1)  # [B, H, N, M + 1]
        out = torch.einsum("bhnm,bnmhd->bnhd", prob[..., :M], vn)
        out = out + prob[..., M].permute(0, 2, 1)[..., None] * P[p + "attn.blank_v"][None, None]
        h = h + out.reshape(B, N, C) @ P[p + "attn.proj.weight"].T + P[p + "attn.proj.bias"]
        m = F.layer_norm(h, (C,), P[p + "norm2.weight"], P[p + "norm2.bias"], eps=1e-5)
        m = F.gelu(m @ P[p + "mlp.fc1.weight"].T + P[p + "mlp.fc1.bias"])
        h = h + m @ P[p + "mlp.fc2.weight"].T + P[p + "mlp.fc2.bias"]
    h = F.layer_norm(h, (C,), P["norm.weight"], P["norm.bias"], eps=1e-5).mean(1)
    return h @ P["head.weight"].T + P["head.bias"]


def main():
    d = sys.argv[1]
    cfg = json.load(open(f"{d}/config.json"))
    P = {k: v.double().requires_grad_(True) for k, v in read_safetensors(f"{d}/model.safetensors").items()}
    batch = read_safetensors(f"{d}/batch.safetensors")
    ours = read_safetensors(f"{d}/grads.safetensors")
    x = batch["pixels"].double()
    y = batch["labels"].long()
    idx = batch["idx"].long()
    mask = batch["mask"].bool()
    pos = batch["pos"].double()
    logits = forward(P, cfg, x, idx, mask, pos)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    worst = 0.0
    failed = []
    loss_diff = abs(loss.item() - ours["loss"].double().item())
    print(f"loss: reference {loss.item():.8f}, tessera {ours['loss'].item():.8f}, |diff| {loss_diff:.2e}")
    if loss_diff > 1e-4:
        failed.append("loss")
    for name, p in P.items():
        g = ours["grad." + name].double()
        diff = (p.grad - g).abs().max().item()
        scale = p.grad.abs().max().item()
        worst = max(worst, diff)
        print(f"  {name:34s} max|ref| {scale:.3e}  max|diff| {diff:.3e}")
        if diff > 1e-4:
            failed.append(name)
    assert len(P) == sum(1 for k in ours if k.startswith("grad.")), "gradient count differs"
    print(f"worst gradient difference {worst:.3e} over {len(P)} parameters")
    if failed:
        print("FAILED:", ", ".join(failed))
        sys.exit(1)
    print("PASSED")


if __name__ == "__main__":
    main()
