"""Every parallel mode against one process on the same data: 2 gloo ranks on CPU, losses/grads/params 1e-5.

The tiny LM (2 blocks, d=32, GQA, SwiGLU) trains 3 steps with warmup, cosine decay, clipping, 2 accumulated
micro-batches and labels partly hidden, so that token counts differ between micro-batches and ranks. Data
parallel modes see 2 sequences per rank per micro-batch, the single-process reference 4 (the union); TP and PP
see the reference's own 2.
"""

from __future__ import annotations

import os

import pytest
import torch

# Imported here, in the parent, so that forked ranks do not each pay for these imports.
import torch.distributed.checkpoint  # noqa: F401
import torch.distributed.fsdp  # noqa: F401
import torch.distributed.optim  # noqa: F401
import torch.distributed.pipelining  # noqa: F401
import torch.distributed.tensor.parallel  # noqa: F401
import train_dist_worker as worker
from train_helpers import collate, run_ranks, small_cfg, tiny_gpt2, tiny_llama, token_data

from gensys.train import ParallelConfig, ResumableLoader, Trainer
from gensys.train.monitor import read_metrics
from gensys.train.parallel import _resolve_sizes
from gensys.train.pipeline import DecoderStage, split_layers

RESUMES = ["fsdp_resume", "zero1_resume", "tp_resume", "pp_1f1b_resume"]
MODES = [
    "ddp",
    "ddp_hidden",
    "zero1",
    "fsdp",
    "tp",
    "tp_gpt2",
    "pp_gpipe",
    "pp_1f1b",
    "fsdp_ckpt",
    "fsdp_fp16",
    *RESUMES,
]
DP_MODES = {"ddp", "ddp_hidden", "zero1", "fsdp", "fsdp_ckpt"}
TOL = 1e-5


def _reference(tmp_path, batch_size: int, build=tiny_llama) -> dict:
    """One process, mode none, `batch_size` sequences per micro-batch."""
    name = f"ref{batch_size}_{build.__name__}"
    cfg = small_cfg(str(tmp_path / name))
    trainer = Trainer(build(), cfg, train_data=ResumableLoader(token_data(), batch_size, collate))
    grads: dict[str, torch.Tensor] = {}

    def grab(opt, args, kwargs):
        if not grads:
            grads.update({n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()})

    trainer.optimizer.register_step_pre_hook(grab)
    trainer.fit()
    losses = [r["loss"] for r in read_metrics(tmp_path / name / "metrics.jsonl")]
    return {"losses": losses, "grads": grads, "params": trainer.full_model_state()}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parallel")
    run_ranks(worker.run_all, 2, str(tmp), MODES, timeout=240)
    out = {name: torch.load(tmp / f"{name}.pt", weights_only=True) for name in MODES}
    out["ref_dp"] = _reference(tmp, 2 * worker.B_LOCAL)
    out["ref_1"] = _reference(tmp, worker.B_LOCAL)
    out["ref_gpt2"] = _reference(tmp, worker.B_LOCAL, tiny_gpt2)
    out["dir"] = tmp
    return out


def _assert_close_dicts(got: dict, want: dict, what: str, atol: float = TOL) -> None:
    assert set(got) == set(want), f"{what}: names differ: {set(got) ^ set(want)}"
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=atol, rtol=0, msg=lambda m, k=k: f"{what} {k}: {m}")


@pytest.mark.parametrize(
    "mode", ["ddp", "ddp_hidden", "zero1", "fsdp", "fsdp_ckpt", "tp", "tp_gpt2", "pp_gpipe", "pp_1f1b"]
)
def test_parallel_mode_matches_single_process(results, mode):
    ref = results["ref_dp"] if mode in DP_MODES else results["ref_gpt2" if mode == "tp_gpt2" else "ref_1"]
    got = results[mode]
    assert len(got["losses"]) == 3
    assert got["losses"] == pytest.approx(ref["losses"], abs=TOL)
    # The loss must actually change, or equal losses would prove nothing about the updates.
    assert abs(got["losses"][0] - got["losses"][2]) > 1e-3
    _assert_close_dicts(got["grads"], ref["grads"], f"{mode} step-1 grad")
    # Parameters after 3 AdamW steps (lr 1e-2): Adam divides by sqrt(v), which magnifies 1e-7 rounding
    # differences in near-zero gradient entries; 1e-4 is still 100x below a single step's update.
    _assert_close_dicts(got["params"], ref["params"], f"{mode} final param", atol=1e-4)


@pytest.mark.parametrize("name", RESUMES)
def test_resume_from_checkpoint_matches_uninterrupted(results, name):
    got, ref = results[name], results[name.removesuffix("_resume")]
    assert got["resumed_step"] == 2
    assert os.path.isdir(results["dir"] / name / "last_sharded") == (name == "fsdp_resume")
    assert got["loss3"] == pytest.approx(ref["losses"][2], abs=1e-6)
    _assert_close_dicts(got["params"], ref["params"], f"resumed {name} param", atol=1e-6)


def test_fsdp_fp16_loss_scaling_over_shards(results):
    # fp16 rounding moves the losses a little; the inf check over DTensor shards must not crash or diverge.
    got, ref = results["fsdp_fp16"], results["ref_dp"]
    assert got["losses"] == pytest.approx(ref["losses"], abs=2e-2)
    assert got["losses"] != pytest.approx(ref["losses"], abs=1e-7)  # it did run in half precision


def test_reference_batches_differ_in_token_count():
    # The parity above only tests token normalisation if micro-batches carry different numbers of targets.
    data = ResumableLoader(token_data(), worker.B_LOCAL, collate)
    counts = {int((next(data)["labels"] != -100).sum()) for _ in range(6)}
    assert len(counts) > 1


def test_pipeline_stages_chain_to_the_model_forward():
    for model in (tiny_llama(n_layers=3), tiny_gpt2()):
        ids = torch.randint(0, 64, (2, 10))
        want = model(ids)
        n = len(model.blocks)
        stages = [DecoderStage(model, r, i == 0, i == 1) for i, r in enumerate(split_layers(n, 2))]
        h = ids
        for s in stages:
            h = s(h)
        torch.testing.assert_close(h, want, atol=0, rtol=0)
        names = {k for s in stages for k in s.state_dict()}
        assert names == set(model.state_dict())


def test_split_layers_and_sizes():
    assert [list(r) for r in split_layers(5, 2)] == [[0, 1, 2], [3, 4]]
    with pytest.raises(ValueError):
        split_layers(1, 2)
    assert _resolve_sizes(ParallelConfig(mode="fsdp_tp"), 4) == (1, 2, 2)
    assert _resolve_sizes(ParallelConfig(mode="pp"), 2) == (2, 1, 1)
    with pytest.raises(ValueError, match="world size"):
        _resolve_sizes(ParallelConfig(mode="fsdp_tp", tp_size=3), 4)
    with pytest.raises(ValueError, match="mode=none"):
        _resolve_sizes(ParallelConfig(mode="none"), 2)


def test_hybrid_fsdp_tp_on_four_ranks_matches_single_process(results, tmp_path):
    # 2-D mesh: TP over pairs of ranks, FSDP over the 2 pairs; data split 2 ways like DDP.
    run_ranks(worker.run_all, 4, str(tmp_path), ["fsdp_tp"], timeout=240)
    got, ref = torch.load(tmp_path / "fsdp_tp.pt", weights_only=True), results["ref_dp"]
    assert got["losses"] == pytest.approx(ref["losses"], abs=TOL)
    _assert_close_dicts(got["grads"], ref["grads"], "fsdp_tp step-1 grad")
    _assert_close_dicts(got["params"], ref["params"], "fsdp_tp final param", atol=1e-4)
