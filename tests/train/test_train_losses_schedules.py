"""Token cross-entropy against torch's mean reduction, lr schedules against Hugging Face's, the loader."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from train_helpers import collate, token_data

from gensys.train import (
    IGNORE_INDEX,
    ResumableLoader,
    TrainConfig,
    eval_batches,
    lr_multiplier,
    param_groups,
    token_cross_entropy,
)


def test_token_cross_entropy_is_sum_and_count_of_torch_mean():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g)
    targets = torch.randint(0, 11, (3, 7), generator=g)
    targets[0, :4] = IGNORE_INDEX
    targets[2, 5] = IGNORE_INDEX
    loss_sum, n = token_cross_entropy(logits, targets)
    assert int(n) == 21 - 5
    mean = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(loss_sum / n, mean)
    # Written out: -log softmax at the target, over the kept positions only.
    logp = torch.log_softmax(logits, -1)
    keep = targets != IGNORE_INDEX
    manual = -logp.gather(-1, targets.clamp_min(0)[..., None])[..., 0][keep].sum()
    torch.testing.assert_close(loss_sum, manual)


def test_token_cross_entropy_label_smoothing_matches_formula():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(10, 5, generator=g)
    targets = torch.randint(0, 5, (10,), generator=g)
    targets[3] = IGNORE_INDEX
    eps = 0.1
    loss_sum, n = token_cross_entropy(logits, targets, label_smoothing=eps)
    logp = torch.log_softmax(logits, -1)
    keep = targets != IGNORE_INDEX
    nll = -logp.gather(-1, targets.clamp_min(0)[:, None])[:, 0]
    smooth = -logp.mean(-1)
    want = ((1 - eps) * nll + eps * smooth)[keep].sum()
    torch.testing.assert_close(loss_sum, want)
    assert int(n) == 9


def test_token_cross_entropy_bf16_logits_computed_in_fp32():
    logits = torch.randn(4, 6, 50).to(torch.bfloat16)
    targets = torch.randint(0, 50, (4, 6))
    loss_sum, _ = token_cross_entropy(logits, targets)
    assert loss_sum.dtype == torch.float32
    ref = F.cross_entropy(logits.float().reshape(-1, 50), targets.reshape(-1), reduction="sum")
    torch.testing.assert_close(loss_sum, ref)


def test_all_ignored_gives_zero_sum_and_count():
    loss_sum, n = token_cross_entropy(torch.randn(2, 3, 4), torch.full((2, 3), IGNORE_INDEX))
    assert float(loss_sum) == 0.0 and int(n) == 0


@pytest.mark.parametrize("warmup,total,min_ratio", [(10, 100, 0.1), (0, 50, 0.0), (5, 5, 0.2)])
def test_cosine_schedule_matches_hugging_face(warmup, total, min_ratio):
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hf = get_cosine_with_min_lr_schedule_with_warmup(opt, warmup, total, min_lr_rate=min_ratio)
    hf_fn = hf.lr_lambdas[0]
    for step in range(total + 3):
        ours = lr_multiplier(
            step, warmup_steps=warmup, max_steps=total, schedule="cosine", min_lr_ratio=min_ratio
        )
        if step < warmup:
            # HF's first update uses lr 0; ours starts at 1/warmup (one step ahead on the same line).
            assert ours == pytest.approx(hf_fn(step + 1))
        elif step <= total:
            assert ours == pytest.approx(hf_fn(step), abs=1e-12)
        else:
            assert ours == pytest.approx(min_ratio)


def test_constant_schedule_and_unknown_schedule():
    assert [lr_multiplier(s, warmup_steps=4, max_steps=10, schedule="constant") for s in (0, 3, 4, 9)] == [
        0.25,
        1.0,
        1.0,
        1.0,
    ]
    with pytest.raises(ValueError):
        lr_multiplier(5, warmup_steps=0, max_steps=10, schedule="linear")


def test_train_config_validation_and_yaml_loading(tmp_path):
    from gensys.config import load_config

    with pytest.raises(ValueError):
        TrainConfig(grad_accum_steps=0)
    p = tmp_path / "t.yaml"
    p.write_text("lr: 1.0e-3\nbetas: [0.9, 0.99]\nparallel:\n  mode: fsdp\n")
    cfg = load_config(TrainConfig, p, ["parallel.pp_schedule=gpipe", "precision=bf16"])
    assert cfg.lr == 1e-3 and cfg.betas == (0.9, 0.99)
    assert cfg.parallel.mode == "fsdp" and cfg.parallel.pp_schedule == "gpipe" and cfg.precision == "bf16"
    from gensys.config import ConfigError

    with pytest.raises(ConfigError, match="mode"):
        load_config(TrainConfig, None, ["parallel.mode=zero3"])


def test_param_groups_decay_only_matrices_and_dedupe_ties():
    emb = torch.nn.Embedding(5, 3)
    head = torch.nn.Linear(3, 5, bias=True)
    head.weight = emb.weight
    norm = torch.nn.LayerNorm(3)
    named = [*emb.named_parameters(), *head.named_parameters(), *norm.named_parameters()]
    groups = param_groups(named, 0.1)
    assert [len(g["params"]) for g in groups] == [1, 3]
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0


def test_loader_ranks_partition_the_single_process_batches():
    data = token_data(20)
    single = ResumableLoader(data, 4, collate, seed=3)
    ranks = [ResumableLoader(data, 2, collate, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(12):  # crosses epoch boundaries (5 global batches per epoch)
        big = next(single)["input_ids"]
        parts = torch.cat([next(r)["input_ids"] for r in ranks])
        assert torch.equal(big, parts)
    assert single.epoch == 2


def test_loader_resumes_mid_epoch_and_rejects_other_seed():
    data = token_data(30)
    a = ResumableLoader(data, 4, collate, seed=1)
    for _ in range(9):
        next(a)
    b = ResumableLoader(data, 4, collate, seed=1)
    b.load_state_dict(a.state_dict())
    for _ in range(10):
        assert torch.equal(next(a)["input_ids"], next(b)["input_ids"])
    with pytest.raises(ValueError, match="seed"):
        ResumableLoader(data, 4, collate, seed=2).load_state_dict(a.state_dict())


def test_eval_batches_same_count_per_rank_and_cover_everything_once():
    data = token_data(11)
    seen = []
    per_rank = []
    for r in range(3):
        batches = list(eval_batches(data, 2, collate, rank=r, world_size=3))
        per_rank.append(len(batches))
        seen += [row for b, counts in batches if counts for row in b["input_ids"]]
    assert len(set(per_rank)) == 1
    assert len(seen) == 11
    assert sorted(tuple(x.tolist()) for x in seen) == sorted(tuple(d["input_ids"].tolist()) for d in data)
    limited = list(eval_batches(data, 2, collate, rank=0, world_size=1, max_batches=2))
    assert len(limited) == 2
