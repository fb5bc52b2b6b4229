"""Every shipped compose config loads, and the demo fits the checkpoint and latency budgets by size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gensys.apps.compose.config import Config
from gensys.config import ConfigError, load_config
from gensys.models.decoder_lm import DecoderLM

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = sorted((ROOT / "configs" / "compose").glob("*.yaml"))


def test_the_three_configs_exist():
    assert {p.stem for p in CONFIGS} >= {"tiny", "demo", "quality"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads(path):
    cfg = load_config(Config, path)
    assert cfg.model.vocab_size == cfg.data.vocab_size
    assert cfg.suggest.max_context_tokens <= cfg.model.max_seq_len or cfg.model.pos != "learned"


def test_demo_weights_fit_10_mb_in_fp16():
    cfg = load_config(Config, ROOT / "configs/compose/demo.yaml")
    n = sum(p.numel() for p in DecoderLM(cfg.model).parameters())
    assert 2 * n <= 10_000_000


def test_unknown_keys_are_errors():
    with pytest.raises(ConfigError, match="suggest.num_beam"):
        load_config(Config, ROOT / "configs/compose/tiny.yaml", ["suggest.num_beam=3"])


def test_shipped_demo_checkpoint_if_present():
    ckpt = ROOT / "models" / "compose"
    if not (ckpt / "model.safetensors").is_file():
        pytest.skip("no demo checkpoint in models/compose yet")
    memory = {"memory.safetensors", "memory.json"}  # the ∞-gram index of the train emails, 2 bytes a token
    total = sum(f.stat().st_size for f in ckpt.iterdir() if f.is_file() and f.name not in memory)
    assert (ckpt / "model.safetensors").stat().st_size <= 10_000_000 and total <= 11_000_000
    assert (ckpt / "memory.safetensors").stat().st_size <= 16_000_000
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["family"] == "decoder_lm" and cfg["weights_dtype"] == "float16"
    from gensys.apps.compose.predictor import load_predictor

    pred = load_predictor(ckpt)
    assert pred.backend.memory is not None
    r = pred.suggest("Please let me ", subject="Meeting")
    assert set(r) >= {"suggestion", "confidence", "triggered", "reason", "latency_ms"}


@pytest.mark.parametrize("bad", ["suggest.max_beam_rows=-1", "suggest.min_beams=0"])
def test_beam_budget_settings_are_checked(bad):
    with pytest.raises((ConfigError, ValueError), match="max_beam_rows|min_beams"):
        load_config(Config, ROOT / "configs/compose/tiny.yaml", [bad])
