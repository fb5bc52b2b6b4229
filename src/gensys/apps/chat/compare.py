"""Comparison: win rate of the PPO and DPO policies against SFT on held-out prompts, judged by the RM.

Prompts: the first `compare.hh_prompts` of the HH preference *eval* split (no stage trains on them) and the
first `compare.user_prompts` of Self-Instruct's user-oriented set (evaluation only). Every policy answers
every prompt with the same sampling settings and seeds; the reward model scores prompt + reply + <|end|>.

- win rate of X vs SFT = share of prompts where RM(X's reply) > RM(SFT's reply), ties counting one half;
  with `samples_per_prompt` > 1 a policy's score on a prompt is the mean over its replies; ± is a 95%
  normal-approximation interval over prompts.
- length-controlled win rate: the same on scores with the linear length effect removed (slope of RM score on
  reply length, fitted by least squares over all replies of all policies), so a policy cannot win by writing
  longer (or shorter) replies that the RM happens to prefer.

Writes compare/results.json, compare/table.md, compare/win_rates.png and compare/samples.jsonl.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from gensys.apps.chat.common import (
    end_ids,
    length_slope,
    load_lm,
    load_reward_model,
    log,
    mark_done,
    prompt_ids,
    resolve_device,
    sample_replies,
    score,
    scoring_ids,
    stage_checkpoint,
    stage_dir,
    strip_end,
)
from gensys.apps.chat.config import Config
from gensys.apps.chat.data import read_preference, read_user_oriented
from gensys.data.atomic import atomic_write, atomic_write_text
from gensys.data.tokenizer import Tokenizer
from gensys.errors import CheckpointError


def win_rate(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(share of rows where a > b, ties counting 1/2; half-width of its 95% normal interval)."""
    wins = (a > b).float() + 0.5 * (a == b).float()
    p = float(wins.mean())
    return p, 1.96 * math.sqrt(max(p * (1 - p), 1e-12) / max(len(a), 1))


def eval_prompts(cfg: Config) -> list[tuple[str, list[dict[str, str]]]]:
    """(subset, messages) of the held-out comparison prompts."""
    cc = cfg.compare
    out: list[tuple[str, list[dict[str, str]]]] = []
    if cc.hh_prompts:
        out += [("hh", p.messages) for p in read_preference(cfg.data, "eval")[: cc.hh_prompts]]
    if cc.user_prompts:
        out += [
            ("user", ex.messages)
            for ex in read_user_oriented(cfg.data, cfg.sft.system_prompt)[: cc.user_prompts]
        ]
    return out


def policy_checkpoints(cfg: Config) -> dict[str, Path]:
    """sft plus every configured policy that has a checkpoint in the run directory."""
    out = {"sft": stage_checkpoint(cfg, "sft")}
    for name in cfg.compare.policies:
        try:
            out[name] = stage_checkpoint(cfg, name)
        except CheckpointError:
            log(f"compare: no {name} checkpoint, skipped")
    return out


def answer_all(
    path: Path, tok: Tokenizer, prompts: list[list[int]], cfg: Config, device: torch.device
) -> list[list[int]]:
    """Replies of one policy to every prompt (x samples_per_prompt), with per-batch seeds shared by all
    policies so that differences come from the models, not the random draws."""
    cc = cfg.compare
    model, _ = load_lm(path, device)
    rows = [p for p in prompts for _ in range(cc.samples_per_prompt)]
    out: list[list[int]] = []
    for s in range(0, len(rows), cc.batch_size):
        gen = torch.Generator(device=device).manual_seed(cc.seed + s)
        out += sample_replies(
            model,
            tok,
            rows[s : s + cc.batch_size],
            max_new_tokens=cc.max_new_tokens,
            temperature=cc.temperature,
            top_k=cc.top_k,
            generator=gen,
        )
    return out


def plot_win_rates(results: dict[str, Any], png: Path) -> None:
    """Bar chart: raw and length-controlled win rate vs SFT per policy, 50% line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["win_rate_vs_sft"])
    if not names:
        return
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    xs = range(len(names))
    for off, key, label in (
        (-0.18, "win_rate_vs_sft", "RM win rate"),
        (0.18, "lc_win_rate_vs_sft", "length-controlled"),
    ):
        vals = [results[key][n]["all"][0] * 100 for n in names]
        errs = [results[key][n]["all"][1] * 100 for n in names]
        ax.bar([x + off for x in xs], vals, width=0.36, yerr=errs, capsize=3, label=label)
    ax.axhline(50, color="gray", linestyle="--", linewidth=1)
    ax.set_xticks(list(xs), [n.upper() for n in names])
    ax.set_ylabel("win rate vs SFT (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"judged by the reward model, {results['prompts']} held-out prompts")
    ax.legend(loc="lower right")
    fig.tight_layout()
    atomic_write(png, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def table(results: dict[str, Any]) -> str:
    """Markdown table of the comparison."""
    lines = [
        "| policy | win rate vs SFT (all) | HH prompts | user prompts | length-controlled | mean RM score "
        "| mean reply tokens | ended by itself |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, st in results["policies"].items():
        if name == "sft":
            wr = lc = hh = us = "-"
        else:
            w, lcw = results["win_rate_vs_sft"][name], results["lc_win_rate_vs_sft"][name]
            wr = f"{w['all'][0]:.1%} ± {w['all'][1]:.1%}"
            hh = f"{w['hh'][0]:.1%}" if "hh" in w else "-"
            us = f"{w['user'][0]:.1%}" if "user" in w else "-"
            lc = f"{lcw['all'][0]:.1%} ± {lcw['all'][1]:.1%}"
        lines.append(
            f"| {name.upper()} | {wr} | {hh} | {us} | {lc} | {st['mean_rm_score']:+.3f} | "
            f"{st['mean_reply_tokens']:.1f} | {st['eos_rate']:.0%} |"
        )
    return "\n".join(lines) + "\n"


def run(cfg: Config, tok: Tokenizer) -> dict[str, Any]:
    """Generate, score and compare; returns the results dict (also written to compare/)."""
    cc = cfg.compare
    out_dir = stage_dir(cfg, "compare")
    device = resolve_device(cfg.ppo.device)
    rm_path = Path(cfg.ppo.reward_from) if cfg.ppo.reward_from else stage_checkpoint(cfg, "reward")
    rm, _ = load_reward_model(rm_path, device)
    items = eval_prompts(cfg)
    prompts = [prompt_ids(tok, m, cc.max_prompt_len) for _, m in items]
    rows_prompts = [p for p in prompts for _ in range(cc.samples_per_prompt)]
    stops = end_ids(tok)
    scores: dict[str, torch.Tensor] = {}
    lengths: dict[str, torch.Tensor] = {}
    replies: dict[str, list[list[int]]] = {}
    stats: dict[str, dict[str, float]] = {}
    for name, path in policy_checkpoints(cfg).items():
        log(f"compare: {name} ({path}) answers {len(rows_prompts)} prompts")
        rep = answer_all(path, tok, prompts, cfg, device)
        bodies = [strip_end(r, stops) for r in rep]
        replies[name] = rep
        scores[name] = score(rm, [scoring_ids(tok, p, r) for p, r in zip(rows_prompts, rep)], tok.pad_id)
        lengths[name] = torch.tensor([len(b) for b, _ in bodies], dtype=torch.float32)
        stats[name] = {
            "mean_rm_score": float(scores[name].mean()),
            "mean_reply_tokens": float(lengths[name].mean()),
            "eos_rate": sum(e for _, e in bodies) / len(bodies),
        }
    slope = length_slope(torch.cat(list(scores.values())), torch.cat(list(lengths.values())))
    # A policy's score on a prompt is the mean over its samples: prompts, not samples, are the units compared
    # (samples of one prompt are not independent, so counting them would narrow the interval falsely).
    k = cc.samples_per_prompt
    per_prompt = {name: v.view(-1, k).mean(1) for name, v in scores.items()}  # (P,)
    len_prompt = {name: v.view(-1, k).mean(1) for name, v in lengths.items()}
    subsets = [s for s, _ in items]
    wins: dict[str, dict[str, tuple[float, float]]] = {}
    lc_wins: dict[str, dict[str, tuple[float, float]]] = {}
    for name in scores:
        if name == "sft":
            continue
        wins[name], lc_wins[name] = {}, {}
        for sub in ("all", "hh", "user"):
            idx = torch.tensor([i for i, s in enumerate(subsets) if sub in ("all", s)], dtype=torch.long)
            if len(idx) == 0:
                continue
            a, b = per_prompt[name][idx], per_prompt["sft"][idx]
            wins[name][sub] = win_rate(a, b)
            lc_wins[name][sub] = win_rate(
                a - slope * len_prompt[name][idx], b - slope * len_prompt["sft"][idx]
            )
    results = {
        "prompts": len(items),
        "samples_per_prompt": cc.samples_per_prompt,
        "prompt_subsets": {s: subsets.count(s) for s in sorted(set(subsets))},
        "reward_model": str(rm_path),
        "length_slope_per_token": slope,
        "policies": stats,
        "win_rate_vs_sft": wins,
        "lc_win_rate_vs_sft": lc_wins,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out_dir / "table.md", table(results))
    plot_win_rates(results, out_dir / "win_rates.png")
    samples = []
    for i in range(0, min(12 * k, len(rows_prompts)), k):  # the first reply to each of 12 prompts
        row = {"prompt": tok.decode(rows_prompts[i], skip_special=False)}
        for name in replies:
            row[name] = {
                "reply": tok.decode(strip_end(replies[name][i], stops)[0]),
                "rm": float(scores[name][i]),
            }
        samples.append(row)
    atomic_write_text(out_dir / "samples.jsonl", "".join(json.dumps(s) + "\n" for s in samples))
    log("compare:\n" + table(results))
    mark_done(cfg, "compare", results)
    return results
