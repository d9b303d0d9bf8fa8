"""Independent PyTorch implementation of Tessera's tiny model (Qwen2 layout: RMSNorm, rotary
embeddings, GQA with q/k/v bias, SwiGLU, sliding-window layers). It parses config.json and
model.safetensors itself, recomputes the whole sequence at every step (no KV cache, explicit
causal / sliding-window masks), and must produce the same greedy tokens as `tessera generate`,
run here with 1 and 2 ranks."""
import json
import os
import struct
import subprocess
import sys

import numpy as np
import torch

BIN = os.environ["TESSERA_BIN"]
MPIEXEC = os.environ.get("MPIEXEC", "mpirun")
PROMPT = "Tessera reference check: the quick brown fox"
MAX_TOKENS = 24


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        assert e["dtype"] == "F32", e
        b, end = e["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(data[b:end], dtype="<f4").copy()).reshape(e["shape"])
    return out


def rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, pos, theta):  # x [T, H, D]
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    f = pos[:, None].double() * inv[None, :]
    emb = torch.cat([f, f], -1)
    cos, sin = emb.cos()[:, None, :].float(), emb.sin()[:, None, :].float()
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def forward(cfg, W, ids):
    t = len(ids)
    h, nh, nkv, d = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    window = cfg.get("sliding_window") or 0
    pos = torch.arange(t)
    x = W["model.embed_tokens.weight"][torch.tensor(ids)]
    for l, kind in enumerate(cfg["layer_types"]):
        p = f"model.layers.{l}."
        y = rms(x, W[p + "input_layernorm.weight"], cfg["rms_norm_eps"])
        q = (y @ W[p + "self_attn.q_proj.weight"].T + W[p + "self_attn.q_proj.bias"]).view(t, nh, d)
        k = (y @ W[p + "self_attn.k_proj.weight"].T + W[p + "self_attn.k_proj.bias"]).view(t, nkv, d)
        v = (y @ W[p + "self_attn.v_proj.weight"].T + W[p + "self_attn.v_proj.bias"]).view(t, nkv, d)
        q, k = rope(q, pos, cfg["rope_theta"]), rope(k, pos, cfg["rope_theta"])
        k = k.repeat_interleave(nh // nkv, dim=1)
        v = v.repeat_interleave(nh // nkv, dim=1)
        allowed = pos[None, :] <= pos[:, None]
        if kind == "sliding_attention":
            allowed &= (pos[:, None] - pos[None, :]) < window
        s = torch.einsum("qhd,khd->hqk", q, k) / d**0.5
        s = s.masked_fill(~allowed[None], float("-inf"))
        a = torch.einsum("hqk,khd->qhd", s.softmax(-1), v).reshape(t, nh * d)
        x = x + a @ W[p + "self_attn.o_proj.weight"].T
        y = rms(x, W[p + "post_attention_layernorm.weight"], cfg["rms_norm_eps"])
        m = torch.nn.functional.silu(y @ W[p + "mlp.gate_proj.weight"].T) * (y @ W[p + "mlp.up_proj.weight"].T)
        x = x + m @ W[p + "mlp.down_proj.weight"].T
    x = rms(x, W["model.norm.weight"], cfg["rms_norm_eps"])
    return x @ W["lm_head.weight"].T


def tessera(np_):
    cmd = [BIN, "generate", "--model", "tiny", "--prompt", PROMPT, "--max-tokens", str(MAX_TOKENS),
           "--ignore-eos", "--json"]
    if np_ > 1:
        cmd = [MPIEXEC, "-np", str(np_), "--oversubscribe"] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    report.update(report["requests"][0])  # one prompt: its prompt_ids / output_ids
    return report


def main():
    torch.set_num_threads(1)
    first = tessera(1)
    model_dir = first["model_dir"]
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    W = load_safetensors(os.path.join(model_dir, "model.safetensors"))
    ids = list(first["prompt_ids"])
    assert ids[0] == 256 and bytes(ids[1:]).decode() == PROMPT, "byte tokenizer mismatch"
    out = []
    min_margin = float("inf")
    with torch.no_grad():
        for _ in range(MAX_TOKENS):
            logits = forward(cfg, W, ids)[-1]
            top2 = logits.topk(2).values
            min_margin = min(min_margin, float(top2[0] - top2[1]))
            nxt = int(logits.argmax())
            out.append(nxt)
            ids.append(nxt)
    print(f"reference tokens: {out}\nsmallest top-1/top-2 logit margin: {min_margin:.4g}")
    failures = 0
    for np_ in (1, 2):
        got = first if np_ == 1 else tessera(np_)
        ok = got["output_ids"] == out
        failures += not ok
        print(f"tessera -np {np_}: {'MATCH' if ok else 'MISMATCH'} {got['output_ids']}")
    print(f"{2 - failures} passed, {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
