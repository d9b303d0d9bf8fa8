"""Encoder checkpoints and their reference outputs for the encoder tests.

usage: encoder_checkpoints.py OUT_DIR

BERT sequence classifiers are made and run by Hugging Face transformers (BertForSequenceClassification,
padded batches with attention masks). transformers 4.44 has no ModernBERT, so the ModernBERT
classifiers are written here with Hugging Face's config field names and weight names, and run by an
independent PyTorch implementation below, written from the ModernBERT paper and the config: token
embeddings + LayerNorm (bias-free when norm_bias is false), pre-norm layers (layer 0 without an
attention norm), rotary q/k with rope theta global_rope_theta on global layers (i %
global_attn_every_n_layers == 0) and local_rope_theta on the others, local layers attending to keys
with |i - j| <= local_attention / 2, a GeGLU MLP (Wi -> [input | gate], act(input) * gate), a final
LayerNorm, and the head: dense -> activation -> LayerNorm over the first token or the mean, then the
classifier. Each sequence runs alone (no padding) in float64.

Writes OUT_DIR/<name>/ (config.json, model.safetensors, tokenizer files for BERT) and
OUT_DIR/manifest.json: per model its inputs (ids, token types, labels), logits and loss.
"""
import json
import math
import os
import random
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = sys.argv[1]
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(0)
random.seed(0)

VOCAB = 200
WORDS = ["the", "cat", "dog", "sat", "on", "mat", "a", "big", "red", "ran", "fast", "slow", "and",
         "to", "of", "in", "it", "is", "was", "very", "happy", "sad", "day", "night", "sun"]


def perturb(module, std=0.12):
    """Weights far from transformers' near-zero init, so the logits depend on every tensor."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "LayerNorm.weight" in name or name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(std * torch.randn_like(p))


def random_inputs(n, with_types, max_len=40):
    inputs = []
    for i in range(n):
        length = [1, 2, max_len][i] if i < 3 else random.randint(1, max_len)
        ids = [2] + [random.randint(5, VOCAB - 1) for _ in range(length - 1)] if length > 1 else [2]
        types = [0] * length
        if with_types and length > 3:
            cut = random.randint(1, length - 1)
            types = [0] * cut + [1] * (length - cut)
        inputs.append({"ids": ids, "types": types})
    return inputs


def labels_for(problem, num_labels, n):
    if problem == "single_label_classification":
        return [random.randrange(num_labels) for _ in range(n)]
    if problem == "multi_label_classification":
        return [[float(random.random() < 0.5) for _ in range(num_labels)] for _ in range(n)]
    return [random.uniform(-2, 2) for _ in range(n)] if num_labels == 1 else \
        [[random.uniform(-2, 2) for _ in range(num_labels)] for _ in range(n)]


def loss_of(logits, labels, problem, num_labels):
    if problem == "regression":
        y = torch.tensor(labels, dtype=torch.float64)
        return F.mse_loss(logits.squeeze(), y.squeeze()) if num_labels == 1 else F.mse_loss(logits, y)
    if problem == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), torch.tensor(labels).view(-1))
    return F.binary_cross_entropy_with_logits(logits, torch.tensor(labels, dtype=torch.float64))


def bert_tokenizer(folder):
    from transformers import BertTokenizerFast
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    vocab += [c for c in "abcdefghijklmnopqrstuvwxyz"] + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab = list(dict.fromkeys(vocab))  # "a" is a word and a letter
    vocab += ["[unused%d]" % i for i in range(VOCAB - len(vocab))]
    path = os.path.join(folder, "vocab.txt")
    with open(path, "w") as f:
        f.write("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=path, do_lower_case=True)
    tok.save_pretrained(folder)
    return tok


def make_bert(name, num_labels, problem, hidden_act, layers=2):
    from transformers import BertConfig, BertForSequenceClassification
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=64, type_vocab_size=2,
                     hidden_act=hidden_act, num_labels=num_labels, problem_type=problem,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(cfg).eval()
    perturb(model)
    folder = os.path.join(OUT, name)
    model.save_pretrained(folder, safe_serialization=True)
    tok = bert_tokenizer(folder)
    inputs = random_inputs(11, with_types=True, max_len=60)
    n = len(inputs)
    width = max(len(x["ids"]) for x in inputs)
    ids = torch.zeros(n, width, dtype=torch.long)
    types = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.long)
    for i, x in enumerate(inputs):
        ids[i, :len(x["ids"])] = torch.tensor(x["ids"])
        types[i, :len(x["ids"])] = torch.tensor(x["types"])
        mask[i, :len(x["ids"])] = 1
    labels = labels_for(problem or ("regression" if num_labels == 1 else "single_label_classification"),
                        num_labels, n)
    with torch.no_grad():
        lab = torch.tensor(labels)
        out = model(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=lab)
    texts = ["the cat sat on the mat", "a big red dog ran very fast", "sun",
             "it was a happy day and the night was slow", "dogz sat"]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        text_logits = model(**enc).logits
    return {"name": name, "dir": folder, "family": "bert", "num_labels": num_labels,
            "problem_type": problem or "", "inputs": inputs, "labels": labels,
            "integer_labels": isinstance(labels[0], int),
            "logits": out.logits.tolist(), "loss": float(out.loss),
            "texts": texts, "text_logits": text_logits.tolist()}


# ---- ModernBERT: checkpoint in Hugging Face's layout, independent reference forward -------------

ACT = {"gelu": lambda x: F.gelu(x), "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
       "silu": F.silu}


def layer_norm(x, w, b, eps):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def rotate(x, theta):
    # x [L, H, d]; positions 0..L-1 of this sequence; rotate_half layout.
    length, _, d = x.shape
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    freqs = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    emb = torch.cat([freqs, freqs], -1).double()
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]
    half = d // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


def modernbert_forward(w, c, ids):
    h, heads = c["hidden_size"], c["num_attention_heads"]
    d = h // heads
    eps = c["norm_eps"]
    every = c.get("global_attn_every_n_layers", 3)
    thetas = (c.get("global_rope_theta", 160000.0), c.get("local_rope_theta", 10000.0))
    if "rope_parameters" in c:
        thetas = (c["rope_parameters"]["full_attention"]["rope_theta"],
                  c["rope_parameters"]["sliding_attention"]["rope_theta"])
    g = lambda k: w.get(k)  # noqa: E731 (absent biases are None)
    x = layer_norm(w["model.embeddings.tok_embeddings.weight"][ids],
                   w["model.embeddings.norm.weight"], g("model.embeddings.norm.bias"), eps)
    length = len(ids)
    dist = (torch.arange(length)[:, None] - torch.arange(length)[None, :]).abs()
    for i in range(c["num_hidden_layers"]):
        p = "model.layers.%d." % i
        is_global = i % every == 0
        a = x if i == 0 else layer_norm(x, w[p + "attn_norm.weight"], g(p + "attn_norm.bias"), eps)
        qkv = F.linear(a, w[p + "attn.Wqkv.weight"], g(p + "attn.Wqkv.bias")).view(length, 3, heads, d)
        theta = thetas[0] if is_global else thetas[1]
        q, k, v = rotate(qkv[:, 0], theta), rotate(qkv[:, 1], theta), qkv[:, 2]
        scores = torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(d)
        if not is_global:
            scores = scores.masked_fill(dist[None] > c["local_attention"] // 2, float("-inf"))
        out = torch.einsum("hij,jhd->ihd", scores.softmax(-1), v).reshape(length, h)
        x = x + F.linear(out, w[p + "attn.Wo.weight"], g(p + "attn.Wo.bias"))
        m = layer_norm(x, w[p + "mlp_norm.weight"], g(p + "mlp_norm.bias"), eps)
        inp, gate = F.linear(m, w[p + "mlp.Wi.weight"], g(p + "mlp.Wi.bias")).chunk(2, dim=-1)
        x = x + F.linear(ACT[c["hidden_activation"]](inp) * gate, w[p + "mlp.Wo.weight"],
                         g(p + "mlp.Wo.bias"))
    x = layer_norm(x, w["model.final_norm.weight"], g("model.final_norm.bias"), eps)
    pooled = x[0] if c["classifier_pooling"] == "cls" else x.mean(0)
    pooled = layer_norm(ACT[c["classifier_activation"]](
        F.linear(pooled, w["head.dense.weight"], g("head.dense.bias"))),
        w["head.norm.weight"], g("head.norm.bias"), eps)
    return F.linear(pooled, w["classifier.weight"], w["classifier.bias"])


def make_modernbert(name, num_labels, problem, layers, every, local, pooling, biases, act, cls_act,
                    new_format=False):
    h, inter, heads = 64, 96, 4
    c = {"architectures": ["ModernBertForSequenceClassification"], "model_type": "modernbert",
         "vocab_size": VOCAB, "hidden_size": h, "intermediate_size": inter,
         "num_hidden_layers": layers, "num_attention_heads": heads, "hidden_activation": act,
         "max_position_embeddings": 128, "norm_eps": 1e-5, "norm_bias": biases,
         "attention_bias": biases, "mlp_bias": biases, "classifier_bias": biases,
         "classifier_pooling": pooling, "classifier_activation": cls_act, "local_attention": local,
         "global_attn_every_n_layers": every, "pad_token_id": 0, "cls_token_id": 2,
         "sep_token_id": 3, "torch_dtype": "float32",
         "id2label": {str(i): "L%d" % i for i in range(num_labels)},
         "label2id": {"L%d" % i: i for i in range(num_labels)}}
    if problem:
        c["problem_type"] = problem
    if new_format:
        c["layer_types"] = ["full_attention" if i % every == 0 else "sliding_attention"
                            for i in range(layers)]
        c["rope_parameters"] = {"full_attention": {"rope_type": "default", "rope_theta": 80000.0},
                                "sliding_attention": {"rope_type": "default", "rope_theta": 5000.0}}
    else:
        c["global_rope_theta"] = 160000.0
        c["local_rope_theta"] = 10000.0
    std = 0.12
    w = {}

    def lin(name, out_f, in_f, bias):
        w[name + ".weight"] = std * torch.randn(out_f, in_f)
        if bias:
            w[name + ".bias"] = std * torch.randn(out_f)

    def norm(name):
        w[name + ".weight"] = 1.0 + 0.2 * torch.randn(h)
        if biases:
            w[name + ".bias"] = 0.2 * torch.randn(h)

    w["model.embeddings.tok_embeddings.weight"] = torch.randn(VOCAB, h)
    norm("model.embeddings.norm")
    for i in range(layers):
        p = "model.layers.%d." % i
        if i > 0:
            norm(p + "attn_norm")
        lin(p + "attn.Wqkv", 3 * h, h, biases)
        lin(p + "attn.Wo", h, h, biases)
        norm(p + "mlp_norm")
        lin(p + "mlp.Wi", 2 * inter, h, biases)
        lin(p + "mlp.Wo", h, inter, biases)
    norm("model.final_norm")
    lin("head.dense", h, h, biases)
    norm("head.norm")
    lin("classifier", num_labels, h, True)
    folder = os.path.join(OUT, name)
    os.makedirs(folder, exist_ok=True)
    save_file({k: v.contiguous() for k, v in w.items()}, os.path.join(folder, "model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    inputs = random_inputs(9, with_types=False, max_len=40)
    w64 = {k: v.double() for k, v in w.items()}
    logits = torch.stack([modernbert_forward(w64, c, torch.tensor(x["ids"])) for x in inputs])
    eff = problem or ("regression" if num_labels == 1 else "single_label_classification")
    labels = labels_for(eff, num_labels, len(inputs))
    loss = loss_of(logits, labels, eff, num_labels)
    return {"name": name, "dir": folder, "family": "modernbert", "num_labels": num_labels,
            "problem_type": problem or "", "inputs": inputs, "labels": labels,
            "integer_labels": isinstance(labels[0], int), "logits": logits.tolist(),
            "loss": float(loss)}


manifest = [
    make_bert("bert_single", 3, None, "gelu"),
    make_bert("bert_regression", 1, "regression", "gelu_new"),
    make_bert("bert_multilabel", 4, "multi_label_classification", "gelu", layers=3),
    make_modernbert("modernbert_cls", 3, None, layers=4, every=3, local=8, pooling="cls",
                    biases=False, act="gelu", cls_act="gelu"),
    make_modernbert("modernbert_mean_regression", 1, "regression", layers=3, every=2, local=6,
                    pooling="mean", biases=True, act="gelu_pytorch_tanh", cls_act="silu",
                    new_format=True),
    make_modernbert("modernbert_multilabel", 4, "multi_label_classification", layers=4, every=3,
                    local=16, pooling="cls", biases=False, act="gelu", cls_act="gelu_pytorch_tanh"),
]
with open(os.path.join(OUT, "manifest.json"), "w") as f:
    json.dump(manifest, f)
