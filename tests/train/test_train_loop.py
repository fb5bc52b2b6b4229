"""The single-process loop: accumulation, activation checkpointing, AMP, eval/early stop, outputs, resume."""

from __future__ import annotations

import json

import pytest
import torch
from train_helpers import collate, small_cfg, tiny_gpt2, tiny_llama, token_data

from gensys.checkpoint import load_checkpoint
from gensys.train import (
    ResumableLoader,
    Trainer,
    apply_activation_checkpointing,
    lm_eval_fn,
    lm_loss,
    token_cross_entropy,
)
from gensys.train.monitor import read_metrics


def _records(out_dir) -> list[dict]:
    return read_metrics(f"{out_dir}/metrics.jsonl")


def _losses(out_dir) -> list[float]:
    return [r["loss"] for r in _records(out_dir) if "loss" in r]


def _fit(tmp_path, name, model=None, batch=2, **kw):
    cfg = small_cfg(str(tmp_path / name), **kw)
    trainer = Trainer(model or tiny_llama(), cfg, train_data=ResumableLoader(token_data(), batch, collate))
    grads = {}

    def grab(opt, args, kwargs):
        if not grads:
            grads.update({n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()})

    trainer.optimizer.register_step_pre_hook(grab)
    summary = trainer.fit()
    return trainer, summary, grads


def test_accumulating_micro_batches_equals_one_big_batch(tmp_path):
    t_small, _, g_small = _fit(tmp_path, "accum", batch=2, grad_accum_steps=4)
    t_big, _, g_big = _fit(tmp_path, "big", batch=8, grad_accum_steps=1)
    assert _losses(tmp_path / "accum") == pytest.approx(_losses(tmp_path / "big"), abs=1e-6)
    for k in g_big:
        torch.testing.assert_close(g_small[k], g_big[k], atol=1e-6, rtol=1e-5)
    # The first step's loss is the token-weighted mean over the 8 sequences, computed directly.
    batch = next(ResumableLoader(token_data(), 8, collate))
    loss_sum, n = token_cross_entropy(tiny_llama()(batch["input_ids"]), batch["labels"])
    assert _losses(tmp_path / "big")[0] == pytest.approx(float(loss_sum.detach() / n), abs=1e-6)


def test_activation_checkpointing_same_grads_less_saved_memory():
    batch = collate(token_data(4))

    def grads_and_saved(ckpt: bool):
        model = tiny_gpt2(dropout=0.1)  # dropout: the recomputation must replay the same masks
        if ckpt:
            assert apply_activation_checkpointing(model) == 2
        saved = []

        def pack(t):
            saved.append(t.numel() * t.element_size())
            return t

        torch.manual_seed(5)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss_sum, n, _ = lm_loss(model, batch)
        (loss_sum / n).backward()
        return {k: p.grad for k, p in model.named_parameters()}, sum(saved), set(model.state_dict())

    g0, saved0, names0 = grads_and_saved(False)
    g1, saved1, names1 = grads_and_saved(True)
    assert names0 == names1  # checkpointing does not rename parameters (checkpoints stay compatible)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], atol=0, rtol=0)
    assert saved1 < 0.6 * saved0


def test_bf16_and_fp16_autocast_train_close_to_fp32(tmp_path):
    _, s32, _ = _fit(tmp_path, "fp32")
    seen = []

    def loss_fn(model, batch):
        out = lm_loss(model, batch)
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return out

    for prec in ("bf16", "fp16"):
        cfg = small_cfg(str(tmp_path / prec), precision=prec)
        trainer = Trainer(
            tiny_llama(), cfg, train_data=ResumableLoader(token_data(), 2, collate), loss_fn=loss_fn
        )
        s = trainer.fit()
        assert abs(s["loss"] - s32["loss"]) < 0.05
        assert (trainer.scaler is not None) == (prec == "fp16")
    assert seen[0] == torch.bfloat16 and seen[-1] == torch.float16


def test_token_count_mismatch_is_an_error(tmp_path):
    def mean_counting_loss(model, batch):
        loss_sum, _, m = lm_loss(model, batch)
        return loss_sum, batch["labels"].numel(), m  # counts hidden positions too: wrong

    cfg = small_cfg(str(tmp_path / "x"))
    t = Trainer(
        tiny_llama(), cfg, train_data=ResumableLoader(token_data(), 2, collate), loss_fn=mean_counting_loss
    )
    with pytest.raises(ValueError, match="target tokens"):
        t.fit()


def test_eval_best_checkpoint_early_stop_and_outputs(tmp_path):
    scripted = iter([3.0, 2.0, 2.5, 2.6, 2.7, 2.8])

    def eval_fn(model):
        return {"val_loss": next(scripted)}

    cfg = small_cfg(
        str(tmp_path / "run"), max_steps=20, eval_every=2, early_stop_patience=2, plot=True, save_every=3
    )
    trainer = Trainer(
        tiny_llama(), cfg, train_data=ResumableLoader(token_data(), 2, collate), eval_fn=eval_fn
    )
    s = trainer.fit()
    assert s["stopped_early"] and s["step"] == 8 and s["best_metric"] == 2.0
    best = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert best["step"] == 4 and best["family"] == "decoder_lm"
    records = _records(tmp_path / "run")
    assert [r["val_loss"] for r in records if "val_loss" in r] == [3.0, 2.0, 2.5, 2.6]
    assert all({"loss", "lr", "grad_norm", "tok_per_s"} <= set(r) for r in records if "val_loss" not in r)
    assert (tmp_path / "run" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # last/ is a standard checkpoint: it rebuilds the trained model.
    model, config, _ = load_checkpoint(tmp_path / "run" / "last")
    ids = torch.randint(0, 64, (2, 8))
    torch.testing.assert_close(model(ids), trainer.model.eval()(ids))
    assert config["train"]["max_steps"] == 20


def test_lm_eval_fn_token_weighted(tmp_path):
    data = token_data(10)
    model = tiny_llama()
    got = lm_eval_fn(data, 3, collate)(model)
    batch = collate(data)
    loss_sum, n = token_cross_entropy(model(batch["input_ids"]), batch["labels"])
    assert got["val_loss"] == pytest.approx(float(loss_sum.detach() / n), rel=1e-6)
    assert got["val_tokens"] == int(n)


def test_resume_after_interruption_is_bit_identical(tmp_path):
    # Dropout on: the RNG state must be restored too, not only weights, optimizer and data position.
    def make(name, **kw):
        cfg = small_cfg(str(tmp_path / name), max_steps=6, grad_accum_steps=1, **kw)
        return Trainer(tiny_gpt2(dropout=0.1), cfg, train_data=ResumableLoader(token_data(20), 4, collate))

    make("full").fit()
    part = make("part")
    for _ in range(3):  # 3 steps, save, then "crash": the next trainer starts from disk
        part.train_step()
        part.step += 1
    part.save("last")
    resumed = make("part")
    assert resumed.step == 3 and resumed.train_data.state_dict()["index"] == 3
    resumed.fit()
    full = _records(tmp_path / "full")
    again = _records(tmp_path / "part")
    assert [r["step"] for r in again] == [4, 5, 6]
    assert [r["loss"] for r in again] == [r["loss"] for r in full[3:]]
    assert [r["grad_norm"] for r in again] == [r["grad_norm"] for r in full[3:]]


def test_tensorboard_option(tmp_path):
    cfg = small_cfg(str(tmp_path / "tb"), max_steps=1, tensorboard=True)
    data = ResumableLoader(token_data(), 2, collate)
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install tensorboard"):
            Trainer(tiny_llama(), cfg, train_data=data)
        return
    Trainer(tiny_llama(), cfg, train_data=data).fit()
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb" / "tensorboard").iterdir())


def test_compile_trains_like_eager(tmp_path):
    # compile=true compiles each block and the default loss's cross-entropy; the losses and first-step
    # gradients stay those of eager execution (up to kernel rounding).
    _, _, g_eager = _fit(tmp_path, "eager")
    t_comp, _, g_comp = _fit(tmp_path, "compiled", compile=True)
    assert _losses(tmp_path / "compiled") == pytest.approx(_losses(tmp_path / "eager"), abs=1e-4)
    for k in g_eager:
        torch.testing.assert_close(g_comp[k], g_eager[k], atol=1e-5, rtol=1e-4)
