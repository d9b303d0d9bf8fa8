"""Writes the tokenizer-side inputs of the fuzz targets from what the tokenizer tests' reference
scripts make with the outside implementations (the test venv's python, HF_HUB_OFFLINE=1):
  tests/fuzz/tokenizers/<name>.json   the tokenizers tests/runtime/tokenizers/hf_reference.py
      trains with the Hugging Face `tokenizers` package (byte-level BPE as GPT-2 / LLaMA 3 / Qwen2,
      SentencePiece-style BPE, WordPiece, BPE with prefix/suffix, Unigram, all-MiniLM-L6-v2's),
      each cut to its first KEEP vocabulary entries and the merges among them, so a file stays a
      few KB. Extra seeds of the tokenizer_json target (its own corpus,
      tests/fuzz_corpus/tokenizer_json/, is the malformed files tokenizer_test checks) and the
      fixed tokenizers the tokenizer_encode target encodes with.
  tests/fuzz_corpus/chat_template/<name>.jinja   the templates of chat_reference.py (public
      templates of LLaMA 3, 3.2, Mistral, Qwen2, Gemma, and constructs): the chat_template
      target's seeds and the fixed templates the chat_messages target renders with.
  tests/fuzz_corpus/chat_messages/<n>.json   some of chat_reference.py's message lists.
Usage: make_tokenizer_seeds.py [REPO_ROOT] [KEEP]
"""

import json
import os
import subprocess
import sys
import tempfile

KEEP_DEFAULT = 320  # tokenizer_encode_fuzz.cpp reads ids >= 320 as added tokens
MESSAGE_SEEDS = 12


def cut(j, keep):
    m = j["model"]
    if m["type"] == "Unigram":
        m["vocab"] = m["vocab"][:keep]
        if m.get("unk_id") is not None and m["unk_id"] >= keep:
            m["unk_id"] = 0
        return j
    vocab = {t: i for t, i in m["vocab"].items() if i < keep}
    m["vocab"] = vocab
    if m["type"] == "BPE":
        prefix = m.get("continuing_subword_prefix") or ""
        merges = []
        for mg in m.get("merges") or []:
            a, b = mg.split(" ", 1) if isinstance(mg, str) else mg
            joined = a + (b[len(prefix):] if prefix and b.startswith(prefix) else b)
            if a in vocab and b in vocab and joined in vocab:
                merges.append(mg)
        m["merges"] = merges
    return j


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "..")
    keep = int(sys.argv[2]) if len(sys.argv) > 2 else KEEP_DEFAULT
    refs = os.path.join(root, "tests", "runtime", "tokenizers")
    tok_out = os.path.join(root, "tests", "fuzz", "tokenizers")
    tpl_out = os.path.join(root, "tests", "fuzz_corpus", "chat_template")
    msg_out = os.path.join(root, "tests", "fuzz_corpus", "chat_messages")
    for d in (tok_out, tpl_out, msg_out):
        os.makedirs(d, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, os.path.join(refs, "hf_reference.py"), tmp, "1"],
                       check=True, stdout=subprocess.DEVNULL)
        for name in sorted(os.listdir(tmp)):
            path = os.path.join(tmp, name, "tokenizer.json")
            if not os.path.isfile(path):
                continue
            with open(path, encoding="utf-8") as f:
                j = cut(json.load(f), keep)
            with open(os.path.join(tok_out, name + ".json"), "w", encoding="utf-8") as f:
                json.dump(j, f, ensure_ascii=False, separators=(",", ":"))
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, os.path.join(refs, "chat_reference.py"), tmp, "20"],
                       check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(tmp, "templates.json"), encoding="utf-8") as f:
            templates = json.load(f)
        for name, source in templates.items():
            with open(os.path.join(tpl_out, name + ".jinja"), "w", encoding="utf-8") as f:
                f.write(source)
        seen = []
        with open(os.path.join(tmp, "cases.jsonl"), encoding="utf-8") as f:
            for line in f:
                msgs = json.loads(line)["messages"]
                if msgs and msgs not in seen:
                    seen.append(msgs)
        for i, msgs in enumerate(seen[:MESSAGE_SEEDS]):
            with open(os.path.join(msg_out, f"messages_{i:02d}.json"), "w", encoding="utf-8") as f:
                json.dump(msgs, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
