"""`gensys chat prepare | train | eval | predict`: the chat system's training-side recipes.

    gensys chat prepare --config configs/chat/demo.yaml                 # BPE tokenizer + data statistics
    gensys chat train   --config configs/chat/demo.yaml                 # every stage: pretrain .. compare
    gensys chat train   --config configs/chat/demo.yaml stage=sft       # one stage (reads the previous one)
    gensys chat eval    --config configs/chat/demo.yaml --what reward   # perplexity | reward | compare
    gensys chat predict --ckpt models/chat/policy < prompts.txt         # raw policy replies (no safety layer)

Each function takes argv and returns an exit code; user errors raise `GensysError` (one line, exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from gensys.apps.chat import compare, dpo, ppo, pretrain, reward, sft
from gensys.apps.chat.common import (
    end_ids,
    is_done,
    load_lm,
    load_reward_model,
    log,
    prompt_ids,
    sample_replies,
    stage_checkpoint,
    stage_dir,
    strip_end,
    tokenizer_path,
    train_tokenizer,
)
from gensys.apps.chat.config import STAGES, Config
from gensys.apps.chat.data import pretrain_documents, read_preference, read_sft, wikitext_test
from gensys.apps.chat.template import sft_messages
from gensys.checkpoint import load_config as load_ckpt_config
from gensys.checkpoint import save_checkpoint
from gensys.config import ConfigError, apply_overrides, config_help, from_dict, to_dict
from gensys.data.atomic import atomic_write_text
from gensys.data.tokenizer import Tokenizer
from gensys.errors import GensysError

DEFAULT_POLICY = "models/chat/policy"
RUNNERS = {
    "pretrain": pretrain.run,
    "sft": sft.run,
    "reward": reward.run,
    "ppo": ppo.run,
    "dpo": dpo.run,
    "compare": compare.run,
}


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_chat_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Config from the defaults, then the YAML file, then `key.sub=value` overrides.

    Unlike a plain `gensys.config.load_config`, a section given in part (e.g. `reward.train.max_steps=5`)
    keeps this system's defaults for the keys it does not mention (the reward stage's `early_stop_metric`,
    the Llama-style model sizes), because the file and overrides are merged into the full default tree.
    """
    data = to_dict(Config())
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
        data, source = _merge(data, loaded), str(p)
    if overrides:
        data, source = apply_overrides(data, overrides), f"{source} + overrides"
    return from_dict(Config, data, source=source)


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="config keys (override as key.sub=value):\n  " + "\n  ".join(config_help(Config)),
        formatter_class=_Formatter,
    )
    p.add_argument("--config", default=None, help="YAML config (configs/chat/{tiny,demo,small}.yaml)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. stage=sft sft.train.lr=3e-4")
    return p


# ---------------------------------------------------------------------------------------------------------
# prepare


def prepare(cfg: Config) -> tuple[Tokenizer, dict[str, Any]]:
    """Train the BPE tokenizer on the pretraining documents + SFT train text; return it with data stats.

    Refuses to replace the tokenizer of a run that already has stage checkpoints (they would no longer
    match the ids the next stages produce).
    """
    if tokenizer_path(cfg).is_file() and any(stage_dir(cfg, s).is_dir() for s in STAGES):
        raise GensysError(
            f"{tokenizer_path(cfg)} already belongs to a run with checkpoints in {cfg.run_dir}; "
            "use another run_dir (or delete the run) to train a new tokenizer"
        )
    train_docs, val_docs = pretrain_documents(cfg.data, cfg.seed)
    sft_train, sft_dev = read_sft(cfg.data, cfg.sft.system_prompt)
    sft_text = [m["content"] for ex in sft_train for m in ex.messages] + [ex.response for ex in sft_train]
    tok = train_tokenizer(cfg, train_docs + sft_text)
    sample = train_docs[:: max(1, len(train_docs) // 200)]
    chars = sum(len(d) for d in sample)
    tokens = sum(len(ids) for ids in tok.encode_batch(sample))
    stats = {
        "tokenizer": str(tokenizer_path(cfg)),
        "vocab_size": tok.vocab_size,
        "pretrain_documents": len(train_docs),
        "pretrain_val_documents": len(val_docs),
        "pretrain_chars": sum(len(d) for d in train_docs),
        "chars_per_token": round(chars / max(tokens, 1), 3),
        "sft_train": len(sft_train),
        "sft_dev": len(sft_dev),
        "preference_train": len(read_preference(cfg.data, "train")),
        "preference_eval": len(read_preference(cfg.data, "eval")),
        "wikitext2_test_articles": len(wikitext_test(cfg.data)),
    }
    return tok, stats


def ensure_tokenizer(cfg: Config) -> Tokenizer:
    """The run's tokenizer: loaded if present, else trained (what `prepare` does)."""
    path = tokenizer_path(cfg)
    if path.is_file():
        return Tokenizer.load(path)
    tok, stats = prepare(cfg)
    log(f"trained tokenizer: {json.dumps(stats)}")
    return tok


def prepare_main(argv: list[str]) -> int:
    """Train the chat tokenizer (BPE + role tokens) and print data statistics."""
    args = _parser("gensys chat prepare", prepare_main.__doc__ or "").parse_args(argv)
    cfg = load_chat_config(args.config, args.overrides)
    _, stats = prepare(cfg)
    print(json.dumps(stats, indent=2))
    return 0


# ---------------------------------------------------------------------------------------------------------
# train


def export(cfg: Config) -> dict[str, Any]:
    """Write the serving checkpoints in fp16: <export_dir>/policy (decoder_lm) and <export_dir>/reward."""
    out = Path(cfg.export_dir)
    results_path = stage_dir(cfg, "compare") / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    choice = cfg.export_policy
    if choice == "auto":
        wins = results.get("win_rate_vs_sft", {})
        ranked = sorted(wins, key=lambda n: wins[n]["all"][0], reverse=True)
        choice = ranked[0] if ranked else ("ppo" if is_done(cfg, "ppo") else "sft")
    policy_path = stage_checkpoint(cfg, choice)
    lm, tok = load_lm(policy_path)
    card = {
        "policy_stage": choice,
        "policy_from": str(policy_path),
        "win_rate_vs_sft": results.get("win_rate_vs_sft", {}).get(choice),
        "lc_win_rate_vs_sft": results.get("lc_win_rate_vs_sft", {}).get(choice),
    }
    save_checkpoint(out / "policy", lm, {**_model_entry(policy_path), "chat": card}, tok, dtype=torch.float16)
    rm_path = stage_checkpoint(cfg, "reward")
    rm, _ = load_reward_model(rm_path)
    rm_eval = stage_dir(cfg, "reward") / "eval.json"
    rm_card = json.loads(rm_eval.read_text()) if rm_eval.is_file() else {}
    save_checkpoint(out / "reward", rm, {**_model_entry(rm_path), "chat": rm_card}, tok, dtype=torch.float16)
    sizes = {d: sum(f.stat().st_size for f in (out / d).iterdir()) for d in ("policy", "reward")}
    summary = {
        **card,
        "reward_model": rm_card,
        "bytes": sizes,
        "total_mb": round(sum(sizes.values()) / 2**20, 2),
    }
    atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2) + "\n")
    log(f"exported {choice} policy and reward model to {out} ({summary['total_mb']} MB)")
    return summary


def _model_entry(ckpt: Path) -> dict[str, Any]:
    c = load_ckpt_config(ckpt)
    return {"family": c["family"], "model": c["model"]}


def train(cfg: Config) -> dict[str, Any]:
    """Run `cfg.stage` (or every stage for `all`, skipping finished ones); returns each stage's figures."""
    tok = ensure_tokenizer(cfg)
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(cfg.run_dir) / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    stages = list(STAGES) if cfg.stage == "all" else [cfg.stage]
    results: dict[str, Any] = {}
    for stage in stages:
        if cfg.stage == "all" and is_done(cfg, stage):
            log(f"{stage}: already done ({stage_dir(cfg, stage) / 'done.json'}), skipped")
            results[stage] = json.loads((stage_dir(cfg, stage) / "done.json").read_text())
            continue
        log(f"=== stage {stage} ===")
        results[stage] = RUNNERS[stage](cfg, tok)
    if cfg.export_dir and cfg.stage in ("all", "compare"):
        results["export"] = export(cfg)
    return results


def train_main(argv: list[str]) -> int:
    """Train the chat model: stage=pretrain|sft|reward|ppo|dpo|compare, or all (the default) in order.
    stage=safety trains the inference pipeline's safety classifier (`gensys.apps.chat.safety`)."""
    if "stage=safety" in argv:
        from gensys.apps.chat.safety import train_safety_main

        return train_safety_main(argv)
    args = _parser("gensys chat train", train_main.__doc__ or "").parse_args(argv)
    cfg = load_chat_config(args.config, args.overrides)
    print(json.dumps(train(cfg), indent=2, default=str))
    return 0


# ---------------------------------------------------------------------------------------------------------
# eval


def evaluate(cfg: Config, what: list[str], ckpt: str = "") -> dict[str, Any]:
    """Held-out figures of a run: WikiText-2 test perplexity of an LM checkpoint (default: the pretrained
    model), reward-model pairwise accuracy on the HH eval split, and the PPO/DPO vs SFT comparison."""
    out: dict[str, Any] = {}
    if "perplexity" in what:
        path = Path(ckpt) if ckpt else stage_checkpoint(cfg, "pretrain")
        lm, tok = load_lm(path)
        out["perplexity"] = {
            "checkpoint": str(path),
            **pretrain.wikitext_perplexity(
                lm, tok, wikitext_test(cfg.data), cfg.pretrain.seq_len, cfg.data.wikitext_eval_tokens
            ),
        }
    if "reward" in what:
        path = Path(cfg.ppo.reward_from) if cfg.ppo.reward_from else stage_checkpoint(cfg, "reward")
        rm, tok = load_reward_model(path)
        pairs = reward.encode_pairs(
            tok, read_preference(cfg.data, "eval"), cfg.reward.max_len, cfg.reward.max_prompt_len
        )
        out["reward"] = {"checkpoint": str(path), **reward.evaluate_pairs(rm, pairs, tok.pad_id)}
    if "compare" in what:
        out["compare"] = compare.run(cfg, ensure_tokenizer(cfg))
    return out


def eval_main(argv: list[str]) -> int:
    """Evaluate a chat run: perplexity, reward-model accuracy, win rates vs SFT (JSON on stdout).
    `--what safety` evaluates the safety classifier instead (`gensys.apps.chat.safety`)."""
    if (
        "--what" in argv
        and argv.index("--what") + 1 < len(argv)
        and argv[argv.index("--what") + 1] == "safety"
    ):
        from gensys.apps.chat.safety import eval_safety_main

        i = argv.index("--what")
        return eval_safety_main(argv[:i] + argv[i + 2 :])
    p = _parser("gensys chat eval", eval_main.__doc__ or "")
    p.add_argument("--what", default="perplexity,reward", help="comma list of perplexity, reward, compare")
    p.add_argument("--ckpt", default="", help="LM checkpoint for perplexity (default: the run's pretrain)")
    args = p.parse_args(argv)
    what = [w.strip() for w in args.what.split(",") if w.strip()]
    bad = sorted(set(what) - {"perplexity", "reward", "compare"})
    if bad:
        raise ConfigError(f"--what: unknown {bad}; expected perplexity, reward, compare")
    cfg = load_chat_config(args.config, args.overrides)
    print(json.dumps(evaluate(cfg, what, args.ckpt), indent=2))
    return 0


# ---------------------------------------------------------------------------------------------------------
# predict


def predict_main(argv: list[str]) -> int:
    """Reply to each stdin line (one user message) with a policy checkpoint: raw sampling, no safety layer
    (the served assistant adds safety filtering and sessions on top, see issue 11). JSON lines out."""
    p = argparse.ArgumentParser(
        prog="gensys chat predict", description=predict_main.__doc__, formatter_class=_Formatter
    )
    p.add_argument(
        "--ckpt", default=DEFAULT_POLICY, help="policy checkpoint (decoder_lm), or a dir with policy/"
    )
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--system", default="", help="system message")
    args = p.parse_args(argv)
    ckpt = Path(args.ckpt)
    if not (ckpt / "config.json").is_file() and (ckpt / "policy" / "config.json").is_file():
        ckpt = ckpt / "policy"  # a serving directory such as models/chat
    model, tok = load_lm(ckpt)
    stops = end_ids(tok)
    max_prompt = max(8, model.cfg.max_seq_len - args.max_new_tokens)
    for i, line in enumerate(sys.stdin):
        text = line.rstrip("\n")
        if not text.strip():
            continue
        prompt = prompt_ids(tok, sft_messages(text, system=args.system), max_prompt)
        gen = torch.Generator().manual_seed(args.seed + i)
        reply = sample_replies(
            model, tok, [prompt], max_new_tokens=args.max_new_tokens, temperature=args.temperature,
            top_k=args.top_k, generator=gen,
        )[0]  # fmt: skip
        body, ended = strip_end(reply, stops)
        out = {"prompt": text, "reply": tok.decode(body), "finish_reason": "stop" if ended else "length"}
        print(json.dumps(out, ensure_ascii=False), flush=True)
    return 0
