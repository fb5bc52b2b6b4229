"""Stage 3, reward model: the SFT trunk with a scalar head, trained on preference pairs.

Input = the chat template of (prompt, reply) ending with <|end|>; the score is read at that last token
(`gensys.models.heads.RewardModel`). Loss over a pair (seed notes 4.2): `margin` = max(0, m - (r_w - r_l))
or `bradley_terry` = -log sigmoid(r_w - r_l - m) (`gensys.train.losses`). Metric: pairwise accuracy on the
held-out HH pairs (a tie counts as wrong). Optional vote-based helpfulness pairs from Stack Exchange
(`reward.se_pairs`): the higher-scored answer to a question is preferred over the lowest-scored one; their own
held-out pairs are scored too, so one can see what they add.
"""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from typing import Any

import torch
from torch import nn

from gensys.apps.chat.common import (
    init_checkpoint,
    last_value,
    load_lm,
    load_reward_model,
    log,
    mark_done,
    stage_dir,
    stage_train_config,
)
from gensys.apps.chat.config import Config
from gensys.apps.chat.data import (
    BucketedLoader,
    PreferencePair,
    collate_pairs,
    n_pairs,
    read_preference,
    se_vote_pairs,
)
from gensys.apps.chat.template import supervised_example
from gensys.data.atomic import atomic_write_text
from gensys.data.tokenizer import Tokenizer
from gensys.metrics.classification import accuracy
from gensys.models.heads import RewardConfig, RewardModel
from gensys.train import Trainer, move_to, seed_everything
from gensys.train.losses import bradley_terry_loss, margin_ranking_loss


def encode_pairs(
    tok: Tokenizer, pairs: list[PreferencePair], max_len: int, max_prompt_len: int
) -> list[dict[str, Any]]:
    """Each pair as `{"chosen": (ids, labels), "rejected": (ids, labels)}` in the chat template."""
    out = []
    for p in pairs:
        out.append(
            {
                "chosen": supervised_example(tok, p.messages, p.chosen, max_len, max_prompt_len),
                "rejected": supervised_example(tok, p.messages, p.rejected, max_len, max_prompt_len),
            }
        )
    return out


def pair_length(item: dict[str, Any]) -> int:
    return max(len(item["chosen"][0]), len(item["rejected"][0]))


def pair_scores(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen, r_rejected), each (B,), of a `collate_pairs` batch."""
    r = model(batch["input_ids"], attention_mask=batch["attention_mask"])  # (2B,)
    b = batch["n_pairs"]
    return r[:b], r[b:]


def reward_loss(model: nn.Module, batch: dict[str, Any], *, kind: str, margin: float):
    """The Trainer's loss_fn: (loss summed over pairs, number of pairs, metrics)."""
    r_w, r_l = pair_scores(model, batch)
    fn = bradley_terry_loss if kind == "bradley_terry" else margin_ranking_loss
    loss_sum, n = fn(r_w, r_l, margin)
    gap = (r_w - r_l).detach()
    return loss_sum, n, {"accuracy": float((gap > 0).float().mean()), "score_gap": float(gap.mean())}


@torch.no_grad()
def evaluate_pairs(model: nn.Module, items: list[dict[str, Any]], pad_id: int, batch_size: int = 16) -> dict:
    """Pairwise accuracy, mean score gap and mean loss-free figures of a reward model on encoded pairs."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gaps = []
    for s in range(0, len(items), batch_size):
        batch = move_to(collate_pairs(items[s : s + batch_size], pad_id), device)
        r_w, r_l = pair_scores(model, batch)
        gaps.append((r_w - r_l).float().cpu())
    model.train(was_training)
    gap = torch.cat(gaps)
    correct = (gap > 0).long().tolist()
    bt, _ = bradley_terry_loss(gap, torch.zeros_like(gap))
    return {
        "accuracy": accuracy([1] * len(correct), correct),
        "score_gap": float(gap.mean()),
        "bt_loss": float(bt) / len(correct),
        "pairs": len(correct),
    }


def build_reward_model(sft_path: Any) -> tuple[RewardModel, Tokenizer]:
    """RewardModel whose trunk is the SFT model's (its lm_head is dropped), with a fresh scalar head."""
    lm, tok = load_lm(sft_path)
    rm = RewardModel(RewardConfig(lm=dataclasses.replace(lm.cfg)))
    rm.load_trunk(lm.state_dict())
    return rm, tok


def run(cfg: Config, tok: Tokenizer) -> dict[str, Any]:
    """Train the reward model; best/ = highest eval accuracy (or `train.early_stop_metric`)."""
    rc = cfg.reward
    tcfg = stage_train_config(cfg, "reward", rc.train)
    init = init_checkpoint(cfg, "reward", rc.init_from)
    train_pairs = read_preference(cfg.data, "train")
    eval_pairs = read_preference(cfg.data, "eval")
    dev_pairs = read_preference(cfg.data, "dev")  # empty unless data.pref_dev_pairs > 0
    se_train: list[PreferencePair] = []
    se_eval: list[PreferencePair] = []
    if rc.se_pairs > 0:
        se_train, se_eval = se_vote_pairs(cfg.data, rc.se_pairs, rc.se_min_score_gap, cfg.seed)
    encode = partial(encode_pairs, tok, max_len=rc.max_len, max_prompt_len=rc.max_prompt_len)
    train = encode(train_pairs + se_train)
    evals = encode(eval_pairs)
    devs = encode(dev_pairs)
    se_evals = encode(se_eval) if se_eval else []
    log(
        f"reward: from {init}; {len(train_pairs)} HH + {len(se_train)} Stack Exchange train pairs, "
        f"{len(devs)} HH dev pairs (checkpoint choice), {len(evals)} HH eval pairs, loss {rc.loss} "
        f"(margin {rc.margin})"
    )
    seed_everything(cfg.seed)
    model, _ = build_reward_model(init)
    collate = partial(collate_pairs, pad_id=tok.pad_id)
    loader = BucketedLoader(train, tcfg.micro_batch_size, collate, pair_length, seed=cfg.seed)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        # val_* (what picks best/): the dev pairs if any, else the eval split; eval_*: the eval split.
        res = evaluate_pairs(m, evals, tok.pad_id, tcfg.micro_batch_size)
        sel = evaluate_pairs(m, devs, tok.pad_id, tcfg.micro_batch_size) if devs else res
        out = {f"val_{k}": sel[k] for k in ("accuracy", "score_gap")} | {"val_loss": sel["bt_loss"]}
        if devs:
            out |= {f"eval_{k}": res[k] for k in ("accuracy", "score_gap")} | {"eval_loss": res["bt_loss"]}
        if se_evals:
            out["val_se_accuracy"] = evaluate_pairs(m, se_evals, tok.pad_id, tcfg.micro_batch_size)[
                "accuracy"
            ]
        return out

    loss_fn = partial(reward_loss, kind=rc.loss, margin=rc.margin)
    trainer = Trainer(
        model,
        tcfg,
        train_data=loader,
        loss_fn=loss_fn,
        eval_fn=eval_fn,
        token_count_fn=n_pairs,
        tokenizer=tok,
    )
    summary = trainer.fit()
    eval_key = "eval_accuracy" if devs else "val_accuracy"
    figures = {
        "init_from": str(init),
        "steps": trainer.step,
        "train_pairs_hh": len(train_pairs),
        "train_pairs_se": len(se_train),
        "dev_pairs": len(devs),
        "eval_pairs": len(evals),
        "eval_accuracy_last": last_value(summary["metrics"], eval_key),
        f"best_val_{tcfg.early_stop_metric.removeprefix('val_')}": summary["best_metric"],
        "final_train_loss": summary["loss"],
        # what a reward model must beat: "the shorter reply is the better one" on the same eval pairs
        "eval_accuracy_shorter_baseline": accuracy(
            [1] * len(eval_pairs), [int(len(p.chosen) < len(p.rejected)) for p in eval_pairs]
        ),
    }
    if devs and summary.get("best"):
        # The checkpoint PPO and the comparison use, scored on pairs that played no part in choosing it.
        best_rm, _ = load_reward_model(summary["best"], next(model.parameters()).device)
        figures["eval_accuracy_best"] = evaluate_pairs(best_rm, evals, tok.pad_id, tcfg.micro_batch_size)[
            "accuracy"
        ]
    if se_evals:
        figures["eval_se_accuracy_last"] = last_value(summary["metrics"], "val_se_accuracy")
        figures["eval_se_pairs"] = len(se_evals)
    atomic_write_text(stage_dir(cfg, "reward") / "eval.json", json.dumps(figures, indent=2) + "\n")
    best_note = (
        f"checkpoint chosen on dev: {figures['eval_accuracy_best']:.3f}"
        if "eval_accuracy_best" in figures
        else f"best {summary['best_metric']}, chosen on eval itself"
    )
    log(
        f"reward: eval accuracy {figures['eval_accuracy_last']:.3f} at the last step ({best_note}; "
        f"shorter-reply baseline {figures['eval_accuracy_shorter_baseline']:.3f})"
    )
    mark_done(cfg, "reward", figures)
    return figures
