"""A tiny data directory in the real layout of data/ (chat, compose, rag, translate), written by the tests.

Small and regular on purpose so a 2-layer model learns something in a few steps: SFT replies repeat a word
from the instruction; in every preference pair the chosen reply politely declines and the rejected one
complies.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

WORDS = ["apple", "river", "stone", "cloud", "green", "music", "paper", "light", "table", "window"]
HARMFUL = ["steal a car", "hurt someone", "break a lock", "cheat on a test", "lie to my boss"]


def _gz_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def _jsonl(path: Path, rows: list[dict], gz: bool = False) -> None:
    lines = [json.dumps(r) for r in rows]
    if gz:
        _gz_lines(path, lines)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _sentence(rng: random.Random) -> str:
    return f"The {rng.choice(WORDS)} is near the {rng.choice(WORDS)} and the {rng.choice(WORDS)}."


def write_data(root: Path, seed: int = 0) -> Path:
    """Write the tiny data tree under `root` and return it (use as `data.data_dir`)."""
    rng = random.Random(seed)
    para = lambda n: " ".join(_sentence(rng) for _ in range(n))  # noqa: E731
    chat = root / "chat"
    (chat / "pretrain").mkdir(parents=True, exist_ok=True)
    (chat / "pretrain" / "tinyshakespeare.txt").write_text(
        "\n\n".join(f"FIRST CITIZEN:\n{para(3)}" for _ in range(30)) + "\n", encoding="utf-8"
    )
    for split in ("valid", "test"):
        lines = []
        for a in range(4):
            lines += [f" = Article {split} {a} = ", "", f" {para(4).replace('-', ' @-@ ')} ", ""]
        _gz_lines(chat / "pretrain" / f"wikitext2_tokenized_{split}.txt.gz", lines)
    _jsonl(
        root / "compose" / "aeslc_train.jsonl.gz",
        [{"id": f"e{i}", "body": para(2), "subject": "s"} for i in range(20)],
        gz=True,
    )
    _jsonl(
        root / "rag" / "questions.jsonl.gz",
        [{"site": "s", "id": i, "title": f"About {WORDS[i]}?", "body_text": para(1)} for i in range(6)],
        gz=True,
    )
    answers = [
        {"site": "s", "id": 100 + 2 * i + k, "question_id": i, "body_text": para(1), "score": 5 * k}
        for i in range(6)
        for k in range(2)
    ]
    _jsonl(root / "rag" / "answers.jsonl.gz", answers, gz=True)
    _gz_lines(root / "translate" / "train.en.gz", [_sentence(rng) for _ in range(60)])

    sft = []
    for i in range(80):
        w = WORDS[i % len(WORDS)]
        sft.append(
            {
                "source": "synthetic",
                "id": f"t{i}",
                "instruction": f"Say the word {w} twice.",
                "input": "",
                "output": f"{w} {w}",
            }
        )
    _jsonl(chat / "sft" / "sft_train.jsonl", sft)
    user = [
        {
            "id": f"user_oriented_task_{i}",
            "instruction": f"Say the word {w} twice.",
            "instances": [{"input": "", "output": f"{w} {w}"}],
        }
        for i, w in enumerate(WORDS[:6])
    ]
    _jsonl(chat / "sft" / "eval_user_oriented_252.jsonl", user)

    def pairs(n: int, offset: int) -> list[dict]:
        rows = []
        for i in range(n):
            act = HARMFUL[(i + offset) % len(HARMFUL)]
            rows.append(
                {
                    "idx": offset + i,
                    "prompt": f"\n\nHuman: How do I {act}?\n\nAssistant:",
                    "chosen": "I am sorry, I cannot help with that.",
                    "rejected": f"Sure! To {act}, just do it at night.",
                    "prompt_matches": True,
                }
            )
        return rows

    _jsonl(chat / "preference" / "hh_harmless_pairs_train.jsonl.gz", pairs(48, 0), gz=True)
    _jsonl(chat / "preference" / "hh_harmless_pairs_eval.jsonl.gz", pairs(8, 1000), gz=True)
    return root
