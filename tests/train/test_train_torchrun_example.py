"""The documented example trains a real LM on real text under `torchrun --nproc_per_node=2` on CPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gensys.checkpoint import load_checkpoint
from gensys.train.monitor import read_metrics

EXAMPLE = Path(__file__).with_name("train_example_text_lm.py")
SMALL = [
    "train.max_steps=8",
    "train.eval_every=0",
    "train.eval_steps=4",
    "train.log_every=2",
    "train.progress=false",
    "train.micro_batch_size=8",
    "model.d_model=64",
    "model.n_layers=2",
    "model.d_ff=176",
    "seq_len=64",
]


def _torchrun(out_dir: Path, mode: str) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",  # rendezvous on a free local port: tests may run side by side
        str(EXAMPLE),
        f"train.parallel.mode={mode}",
        f"train.out_dir={out_dir}",
        *SMALL,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads([ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1])
    return summary


def _check_run(out_dir: Path, summary: dict) -> None:
    losses = [r["loss"] for r in read_metrics(out_dir / "metrics.jsonl") if "loss" in r]
    assert summary["step"] == 8 and len(losses) == 4
    assert losses[-1] < losses[0] - 0.2  # it learns
    assert summary["best_metric"] < math.log(256)  # better than a uniform guess over bytes
    model, config, _ = load_checkpoint(out_dir / "last")
    assert config["family"] == "decoder_lm" and config["train"]["parallel"]["mode"] in ("fsdp", "pp")
    ids = torch.tensor([list(b"To be, or not to be")])
    assert model(ids).shape == (1, ids.shape[1], 256)


def test_torchrun_fsdp_trains_text_lm(tmp_path):
    _check_run(tmp_path, _torchrun(tmp_path, "fsdp"))


@pytest.mark.slow
def test_torchrun_pipeline_trains_text_lm(tmp_path):
    _check_run(tmp_path, _torchrun(tmp_path, "pp"))
