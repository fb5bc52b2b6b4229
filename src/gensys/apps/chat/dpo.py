"""Stage 5b, DPO: optimise the SFT policy directly on the preference pairs against a frozen SFT reference.

loss = -log sigmoid(beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))]) (`gensys.train
.losses.dpo_loss`), log-probs summed over the reply tokens. The frozen reference runs under no_grad on each
training batch (cheaper than scoring every pair up front when a run sees fewer pairs than the set holds,
the CPU case) and once, up front, for the held-out pairs. Logged:
rewards/chosen and rewards/rejected (beta * log pi/ref), accuracy (chosen reward > rejected) and margins.
With `dpo.nll_coef` > 0 the chosen reply's per-token NLL is added (RPO), so the loss is no longer pure DPO.
A loss that collapses to ~0 with accuracy 1.0 on training batches means the policy is memorising the pairs
(the implicit rewards grow without bound): a warning is printed and recorded in done.json.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any

import torch
from torch import nn

from gensys.apps.chat.common import (
    init_checkpoint,
    last_value,
    load_lm,
    log,
    mark_done,
    resolve_device,
    stage_train_config,
)
from gensys.apps.chat.config import Config, DPOConfig
from gensys.apps.chat.data import BucketedLoader, collate_pairs, n_pairs, read_preference
from gensys.apps.chat.reward import encode_pairs, pair_length
from gensys.data.batching import IGNORE_INDEX
from gensys.data.tokenizer import Tokenizer
from gensys.train import Trainer, move_to, seed_everything
from gensys.train.losses import dpo_loss, sequence_logprobs


def pair_logprobs(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed reply log-probs (chosen (B,), rejected (B,)) of a `collate_pairs` batch."""
    logits = model(batch["input_ids"])  # (2B, T, V); right padding needs no mask under causal attention
    lp = sequence_logprobs(logits, batch["labels"])  # (2B,)
    b = batch["n_pairs"]
    return lp[:b], lp[b:]


@torch.no_grad()
def add_reference_logprobs(ref: nn.Module, items: list[dict[str, Any]], pad_id: int, batch_size: int) -> None:
    """Store the frozen reference's log-probs in each item (`ref_chosen`, `ref_rejected`)."""
    ref.eval()
    device = next(ref.parameters()).device
    for s in range(0, len(items), batch_size):
        chunk = items[s : s + batch_size]
        lc, lr = pair_logprobs(ref, move_to(collate_pairs(chunk, pad_id), device))
        for it, c, r in zip(chunk, lc.tolist(), lr.tolist()):
            it["ref_chosen"], it["ref_rejected"] = c, r


class CollapseWatch:
    """Warns once when the DPO loss stays below `threshold` with accuracy 1.0 for `patience` batches."""

    def __init__(self, threshold: float, patience: int) -> None:
        self.threshold, self.patience = threshold, patience
        self.streak = 0
        self.warned_at: int | None = None
        self.batches = 0

    def update(self, mean_loss: float, acc: float) -> None:
        self.batches += 1
        self.streak = self.streak + 1 if (mean_loss < self.threshold and acc >= 1.0) else 0
        if self.streak >= self.patience and self.warned_at is None:
            self.warned_at = self.batches
            msg = (
                f"DPO loss has stayed below {self.threshold} with accuracy 1.0 for {self.streak} batches: "
                "the policy is overfitting the preference pairs (implicit rewards keep growing); lower "
                "max_steps or lr, raise beta, or use label_smoothing"
            )
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            log("dpo: WARNING " + msg)


def dpo_step_loss(
    model: nn.Module,
    batch: dict[str, Any],
    *,
    dc: DPOConfig,
    ref: nn.Module | None = None,
    watch: CollapseWatch | None = None,
):
    """The Trainer's loss_fn: (DPO loss summed over pairs, pairs, metrics). Reference log-probs come from
    the batch (`ref_chosen`/`ref_rejected`) or, when it has none, from `ref` under no_grad."""
    pc, pr = pair_logprobs(model, batch)
    if "ref_chosen" in batch:
        rc, rr = batch["ref_chosen"], batch["ref_rejected"]
    else:
        with torch.no_grad():
            rc, rr = pair_logprobs(ref, batch)
    chosen_tokens = (batch["labels"][: batch["n_pairs"]] != IGNORE_INDEX).sum(dim=1)  # (B,)
    out = dpo_loss(
        pc,
        pr,
        rc,
        rr,
        beta=dc.beta,
        label_smoothing=dc.label_smoothing,
        nll_coef=dc.nll_coef,
        chosen_tokens=chosen_tokens,
    )
    margins = out.chosen_rewards - out.rejected_rewards
    acc = float((margins > 0).float().mean())
    if watch is not None and model.training:
        watch.update(float(out.loss_sum.detach()) / out.n_pairs, acc)
    metrics = {
        "rewards/chosen": float(out.chosen_rewards.mean()),
        "rewards/rejected": float(out.rejected_rewards.mean()),
        "rewards/accuracy": acc,
        "rewards/margins": float(margins.mean()),
    }
    return out.loss_sum, out.n_pairs, metrics


@torch.no_grad()
def evaluate_dpo(
    model: nn.Module, items: list[dict[str, Any]], pad_id: int, dc: DPOConfig, bs: int, prefix: str = "val_"
) -> dict:
    """DPO loss and implicit-reward figures on held-out pairs (pairs weighted equally), keys `prefix`*."""
    device = next(model.parameters()).device
    total, n, sums = 0.0, 0, {"rewards/chosen": 0.0, "rewards/rejected": 0.0, "rewards/accuracy": 0.0}
    for s in range(0, len(items), bs):
        batch = move_to(collate_pairs(items[s : s + bs], pad_id), device)
        loss_sum, k, m = dpo_step_loss(model, batch, dc=dc)
        total += float(loss_sum)
        n += k
        for key in sums:
            sums[key] += m[key] * k
    out = {prefix + "loss": total / n}
    out.update({prefix + k.replace("rewards/", "reward_"): v / n for k, v in sums.items()})
    out[prefix + "reward_margin"] = out[prefix + "reward_chosen"] - out[prefix + "reward_rejected"]
    return out


def run(cfg: Config, tok: Tokenizer) -> dict[str, Any]:
    """Train the DPO policy; best/ = lowest held-out DPO loss."""
    dc = cfg.dpo
    tcfg = stage_train_config(cfg, "dpo", dc.train)
    init = init_checkpoint(cfg, "dpo", dc.init_from)
    encode = partial(encode_pairs, tok, max_len=dc.max_len, max_prompt_len=dc.max_prompt_len)
    train = encode(read_preference(cfg.data, "train"))
    evals = encode(read_preference(cfg.data, "eval"))
    devs = encode(read_preference(cfg.data, "dev"))  # empty unless data.pref_dev_pairs > 0
    seed_everything(cfg.seed)
    ref, _ = load_lm(init, resolve_device(tcfg.device))
    for p in ref.parameters():
        p.requires_grad_(False)
    log(
        f"dpo: from {init}; beta {dc.beta}; {len(train)} train pairs, {len(devs)} dev pairs (checkpoint "
        f"choice), {len(evals)} held-out eval pairs"
    )
    add_reference_logprobs(ref, evals, tok.pad_id, tcfg.micro_batch_size)
    if devs:
        add_reference_logprobs(ref, devs, tok.pad_id, tcfg.micro_batch_size)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        """val_* (what picks best/): the dev pairs if any, else the eval split; eval_*: the eval split."""
        out = evaluate_dpo(m, devs or evals, tok.pad_id, dc, tcfg.micro_batch_size)
        if devs:
            out.update(evaluate_dpo(m, evals, tok.pad_id, dc, tcfg.micro_batch_size, prefix="eval_"))
        return out

    model, _ = load_lm(init)
    watch = CollapseWatch(dc.collapse_loss, dc.collapse_patience)
    collate = partial(collate_pairs, pad_id=tok.pad_id)
    loader = BucketedLoader(train, tcfg.micro_batch_size, collate, pair_length, seed=cfg.seed)
    trainer = Trainer(
        model,
        tcfg,
        train_data=loader,
        loss_fn=partial(dpo_step_loss, dc=dc, ref=ref, watch=watch),
        eval_fn=eval_fn,
        token_count_fn=n_pairs,
        tokenizer=tok,
    )
    summary = trainer.fit()
    figures = {
        "init_from": str(init),
        "beta": dc.beta,
        "steps": trainer.step,
        "train_pairs": len(train),
        "final_train_loss": summary["loss"],
        "train_rewards_accuracy_last": last_value(summary["metrics"], "rewards/accuracy"),
        "train_rewards_margins_last": last_value(summary["metrics"], "rewards/margins"),
        "dev_pairs": len(devs),
        **{
            k: last_value(summary["metrics"], k)
            for k in ("val_loss", "val_reward_accuracy", "val_reward_margin")
        },
        "overfit_warning_at_batch": watch.warned_at,
    }
    if devs:
        for k in ("eval_loss", "eval_reward_accuracy", "eval_reward_margin"):
            figures[k] = last_value(summary["metrics"], k)
    log(
        f"dpo: held-out loss {figures['val_loss']:.4f}, "
        f"reward accuracy {figures['val_reward_accuracy']:.3f}, margin {figures['val_reward_margin']:.3f}"
    )
    mark_done(cfg, "dpo", figures)
    return figures
