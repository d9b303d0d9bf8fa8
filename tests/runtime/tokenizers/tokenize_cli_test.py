"""`tessera tokenize` and `tessera bench tokenizers` driven as a user would, against transformers.

Model folders are written by transformers' save_pretrained (tokenizer.json, tokenizer_config.json
with a chat template and special tokens): a GPT-2-style fast tokenizer, and a LlamaTokenizerFast
whose add_bos_token/add_eos_token transformers turns into the post-processor. For each, the ids
of `tessera tokenize --jsonl --json` must equal tokenizer(text)["input_ids"], `--decode` must equal
the backend's decode, and `--chat --json` must equal apply_chat_template (text and ids). Under
mpirun with two ranks the output appears once. Finally `tessera bench tokenizers --quick --json`
reports both rates with matching ids. Exit 77 (skipped) without the test venv.
"""

import json
import os
import random
import subprocess
import sys
import tempfile

try:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizerFast, PreTrainedTokenizerFast
except ImportError as e:
    print(f"SKIPPED: the test venv is missing ({e})")
    sys.exit(77)

TESSERA = os.environ["TESSERA_BIN"]
LLAMA3_TEMPLATE = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
MISTRAL_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")


def corpus():
    with open("/usr/share/common-licenses/GPL-3", encoding="utf-8") as f:
        return [l for l in f.read().splitlines() if l.strip()]


def texts():
    r = random.Random(5)
    words = " ".join(corpus()).split()
    out = ["", "Hello, wörld!", "<|eot_id|> inside", "emoji 🙂 and 中文", "  spaces  "]
    while len(out) < 200:
        out.append(" ".join(r.choice(words) for _ in range(r.randint(1, 12))) +
                   r.choice(["", "!", " ünïcode", " 123", "\n"]))
    return out


def run(args, stdin=None, np=None):
    cmd = [TESSERA, *args]
    if np:
        cmd = [os.environ.get("MPIEXEC", "mpirun"), "-np", str(np), "--oversubscribe", *cmd]
    p = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def check(cond, msg):
    if not cond:
        sys.exit("FAIL: " + msg)


def byte_level_folder(d):
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=1500, show_progress=False, special_tokens=["<|begin_of_text|>", "<|eot_id|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<|begin_of_text|>",
                                  eos_token="<|eot_id|>")
    tok.chat_template = LLAMA3_TEMPLATE
    tok.save_pretrained(d)
    return tok


def llama_folder(d):
    t = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                               split=False)
    t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                   decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    t.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=1500, show_progress=False, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=[f"<0x{b:02X}>" for b in range(256)]))
    tok = LlamaTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>",
                             unk_token="<unk>", add_bos_token=True, add_eos_token=True,
                             legacy=False)
    tok.chat_template = MISTRAL_TEMPLATE
    tok.save_pretrained(d)
    return tok


def check_folder(name, d, tok):
    cases = texts()
    jsonl = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in cases)
    out = run(["tokenize", "--model", d, "--jsonl", "-", "--json"], stdin=jsonl).splitlines()
    want = tok(cases)["input_ids"]
    check(len(out) == len(cases), f"{name}: {len(out)} output lines for {len(cases)} inputs")
    for text, line, ids in zip(cases, out, want):
        got = json.loads(line)["ids"]
        check(got == ids, f"{name}: ids of {text!r}: tessera {got} transformers {ids}")
    ids_jsonl = "".join(json.dumps(i) + "\n" for i in want)
    dec = run(["tokenize", "--model", d, "--jsonl", "-", "--decode", "--json"], stdin=ids_jsonl)
    for line, ids in zip(dec.splitlines(), want):
        expected = tok.backend_tokenizer.decode(ids, skip_special_tokens=True)
        check(json.loads(line)["text"] == expected, f"{name}: decode of {ids}")
    msgs = [{"role": "user", "content": "Hi there ü"}, {"role": "assistant", "content": " ok "},
            {"role": "user", "content": "why?"}]
    with open(os.path.join(d, "chat.json"), "w", encoding="utf-8") as f:
        json.dump(msgs, f, ensure_ascii=False)
    got = json.loads(run(["tokenize", "--model", d, "--chat", os.path.join(d, "chat.json"),
                          "--json"]))
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    check(got["text"] == text, f"{name}: chat text {got['text']!r} vs {text!r}")
    check(got["ids"] == ids, f"{name}: chat ids {got['ids']} vs {ids}")
    # Two ranks: the same single line of output.
    two = run(["tokenize", "--model", d, "--text", cases[1]], np=2).splitlines()
    check(two == [" ".join(map(str, want[1]))], f"{name}: output under mpirun -np 2: {two}")
    print(f"{name}: {len(cases)} texts, decode and chat template agree with transformers")


def main():
    with tempfile.TemporaryDirectory() as root:
        for name, make in [("byte_level", byte_level_folder), ("llama", llama_folder)]:
            d = os.path.join(root, name)
            check_folder(name, d, make(d))
    bench = json.loads(run(["bench", "tokenizers", "--quick", "--json"]))
    rates = bench["encode_tok_s"]
    check(rates["tessera"] > 0 and rates["hf"] > 0, f"bench rates {rates}")
    check(all(v["ids_match"] for v in bench["by_tokenizer"].values()), "bench ids differ")
    print(f"bench tokenizers --quick: tessera {rates['tessera'] / 1e6:.2f} M tok/s, "
          f"hf {rates['hf'] / 1e6:.2f} M tok/s")


if __name__ == "__main__":
    main()
