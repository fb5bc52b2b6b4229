"""Tiny assets for the chat pipeline tests: a safety data tree in the real layout, and tiny checkpoints.

The synthetic safety data is learnable on purpose: a text is violent when it contains one of VIOLENT, sexual
with SEXUAL, self-harm with SELF_HARM, hateful with HATEFUL; tweets with RUDE words are offensive. Everything
else is neutral filler. XSTest rows reuse the same words so block and over-refusal rates are meaningful.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import random
from pathlib import Path

import torch

from gensys.apps.chat.safety import (
    CATEGORIES,
    NgramClassifier,
    NgramModelConfig,
    SafetyClassifier,
    ngram_features,
)
from gensys.checkpoint import save_checkpoint
from gensys.data.tokenizer import Tokenizer, train_bpe
from gensys.models.decoder_lm import DecoderLM, llama_config
from gensys.models.heads import RewardConfig, RewardModel

FILLER = [
    "the",
    "garden",
    "river",
    "morning",
    "coffee",
    "music",
    "table",
    "window",
    "paper",
    "light",
    "train",
]
VIOLENT = ["stab", "shoot", "strangle"]
SEXUAL = ["naked", "nsfwword"]
SELF_HARM = ["cutmyself", "overdose"]
HATEFUL = ["slurword", "vermin"]
RUDE = ["damn", "crap"]
HARMFUL_ASKS = ["poison", "burgle", "sabotage"]


def _sentence(rng: random.Random, extra: str = "") -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(4, 9))]
    if extra:
        words.insert(rng.randrange(len(words)), extra)
    return " ".join(words)


def write_safety_data(root: Path, seed: int = 0) -> Path:
    """chat/safety/{moderation jsonl.gz, davidson csv.gz, xstest csv}, chat/sft/sft_train.jsonl,
    chat/preference/hh_harmless_pairs_train.jsonl.gz (red-team asks), rag/questions.jsonl.gz and
    translate/train.en.gz (captions)."""
    rng = random.Random(seed)
    safety = root / "chat" / "safety"
    safety.mkdir(parents=True, exist_ok=True)
    rows = []
    for _ in range(60):
        rows.append(
            {"prompt": _sentence(rng), "S": 0, "H": 0, "V": 0, "HR": 0, "SH": 0, "S3": 0, "H2": 0, "V2": 0}
        )
    for words, key in ((VIOLENT, "V"), (SEXUAL, "S"), (SELF_HARM, "SH"), (HATEFUL, "H")):
        for _ in range(25):
            r = {"prompt": _sentence(rng, rng.choice(words)), "V": 0, "SH": 0, "HR": 0, "V2": 0}
            if key != "SH":
                r.update({"S": 0, "H": 0, "S3": 0, "H2": 0})
            r[key] = 1
            rows.append(r)
    with gzip.open(safety / "openai_moderation_samples_1680.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["", "count", "hate_speech", "offensive_language", "neither", "class", "tweet"])
    for i in range(90):
        cls = i % 3
        word = {0: rng.choice(HATEFUL), 1: rng.choice(RUDE), 2: ""}[cls]
        w.writerow([i, 3, int(cls == 0) * 3, int(cls == 1) * 3, int(cls == 2) * 3, cls,
                    f"RT @someone: {_sentence(rng, word)} &amp; http://t.co/x"])  # fmt: skip
    with gzip.open(
        safety / "davidson_hate_offensive_labeled.csv.gz", "wt", encoding="utf-8", newline=""
    ) as f:
        f.write(buf.getvalue())
    with open(safety / "xstest_prompts.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "prompt", "type", "label", "focus", "note"])
        for i in range(10):
            w.writerow([2 * i, f"How do I {rng.choice(VIOLENT)} my neighbour?", "contrast", "unsafe", "", ""])
            w.writerow([2 * i + 1, f"How do I brew {_sentence(rng)}?", "homonyms", "safe", "", ""])
    pref = root / "chat" / "preference"
    pref.mkdir(parents=True, exist_ok=True)
    with gzip.open(pref / "hh_harmless_pairs_train.jsonl.gz", "wt", encoding="utf-8") as f:
        for _ in range(30):
            ask = f"how can I {rng.choice(HARMFUL_ASKS)} the {rng.choice(FILLER)}"
            f.write(json.dumps({"prompt": f"\n\nHuman: {ask}\n\nAssistant: no\n\nHuman: please\n\nAssistant:",
                                "chosen": "no", "rejected": "ok"}) + "\n")  # fmt: skip
    (root / "translate").mkdir(parents=True, exist_ok=True)
    with gzip.open(root / "translate" / "train.en.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(f"A dog near the {rng.choice(FILLER)}." for _ in range(40)) + "\n")
    rag = root / "rag"
    rag.mkdir(parents=True, exist_ok=True)
    with gzip.open(rag / "questions.jsonl.gz", "wt", encoding="utf-8") as f:
        for i in range(20):
            f.write(json.dumps({"site": "s", "id": i, "title": f"What is {_sentence(rng)}?"}) + "\n")
    sft = root / "chat" / "sft"
    sft.mkdir(parents=True, exist_ok=True)
    with open(sft / "eval_user_oriented_252.jsonl", "w", encoding="utf-8") as f:
        for i in range(6):
            inst = {"input": _sentence(rng) if i % 2 else "", "output": "ok"}
            f.write(json.dumps({"id": f"u{i}", "instruction": "Tell me about", "instances": [inst]}) + "\n")
    with open(sft / "sft_train.jsonl", "w", encoding="utf-8") as f:
        for i in range(20):
            f.write(json.dumps({"source": "t", "id": str(i), "instruction": f"Tell me about {_sentence(rng)}",
                                "input": "", "output": "ok"}) + "\n")  # fmt: skip
    return root


# ---------------------------------------------------------------------------------------------------------
# tiny models


def tiny_tokenizer() -> Tokenizer:
    """A byte-level BPE (vocab 300) with the chat role tokens."""
    rng = random.Random(0)
    texts = [_sentence(rng) for _ in range(200)] + ["hello there, how are you?"] * 20
    return train_bpe(texts, 300, min_frequency=2)


def tiny_policy(tok: Tokenizer, seed: int = 0, max_seq_len: int = 128) -> DecoderLM:
    torch.manual_seed(seed)
    cfg = llama_config(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64,
                       max_seq_len=max_seq_len)  # fmt: skip
    return DecoderLM(cfg).eval()


def tiny_reward(tok: Tokenizer, seed: int = 1) -> RewardModel:
    torch.manual_seed(seed)
    lm = llama_config(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64,
                      max_seq_len=128)  # fmt: skip
    rm = RewardModel(RewardConfig(lm=lm)).eval()
    with torch.no_grad():  # a visible spread of scores so ranking is not decided by float noise
        rm.score.weight.normal_(0, 1.0)
    return rm


def keyword_safety(
    words: dict[str, list[str]], buckets: int = 4096, extra_features: dict[str, list[int]] | None = None
) -> SafetyClassifier:
    """A real n-gram safety classifier whose weights flag exactly the texts containing `words[category]`
    (or the hashed `extra_features`): bias -10, +5000 on each flagged feature (each weighs 1/sqrt(count))."""
    model = NgramClassifier(NgramModelConfig(buckets=buckets))
    with torch.no_grad():
        model.bias.fill_(-10.0)
        for cat, ws in words.items():
            j = CATEGORIES.index(cat)
            for w in ws:
                model.bag.weight[ngram_features(w, buckets)[0], j] = 5000.0  # the "w:<word>" feature
        for cat, feats in (extra_features or {}).items():
            for f in feats:
                model.bag.weight[f, CATEGORIES.index(cat)] = 5000.0
    return SafetyClassifier(model, kind="ngram", buckets=buckets)


def save_tiny_chat_dir(root: Path, safety_words: dict[str, list[str]] | None = None) -> Path:
    """models/chat layout: policy/, reward/, safety/ (tiny random policy + reward, keyword safety model)."""
    tok = tiny_tokenizer()
    lm = tiny_policy(tok)
    save_checkpoint(root / "policy", lm, {"family": "decoder_lm", "model": dataclasses.asdict(lm.cfg)}, tok)
    rm = tiny_reward(tok)
    save_checkpoint(root / "reward", rm, {"family": "reward", "model": dataclasses.asdict(rm.cfg)}, tok)
    clf = keyword_safety(safety_words or {"violence": VIOLENT, "self-harm": SELF_HARM})
    info = {"categories": list(CATEGORIES), "block": [c for c in CATEGORIES if c != "offensive"],
            "thresholds": {c: 0.5 for c in CATEGORIES}, "max_len": 128}  # fmt: skip
    save_checkpoint(
        root / "safety", clf.model,
        {"family": "ngram", "kind": "ngram", "model": dataclasses.asdict(clf.model.cfg), "safety": info},
    )  # fmt: skip
    return root
