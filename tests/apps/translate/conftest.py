"""Fixtures of the translate tests: one tiny model trained on 20 Multi30k pairs, shared by the session."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from gensys.apps.translate.config import Config, DataConfig
from gensys.apps.translate.data import read_pairs
from gensys.apps.translate.recipe import train
from gensys.config import load_config

ROOT = Path(__file__).resolve().parents[3]
TINY = ROOT / "configs/translate/tiny.yaml"


@contextlib.contextmanager
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy shared CPU OpenMP threads that wait for
    each other slow them down many times over."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(autouse=True, scope="module")
def _one_thread_per_module():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def tiny_pairs() -> list[tuple[str, str]]:
    """The 20 en-de pairs the tiny config trains on."""
    return read_pairs(DataConfig(pair="en-de"), "train", 20)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """Fine-tuned tiny checkpoint (configs/translate/tiny.yaml, ~250 steps, no pretraining)."""
    out = tmp_path_factory.mktemp("translate_tiny")
    cfg = load_config(Config, TINY, [f"train.out_dir={out}", "val_bleu_sentences=0"])
    with one_thread():
        summary = train(cfg)
    return Path(summary["last"])
