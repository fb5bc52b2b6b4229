"""Every YAML file shipped under configs/ loads into its typed config (a stale key fails here)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from gensys.config import load_config

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "configs").glob("*/*.yaml"))


def config_class(path: Path) -> type:
    """The dataclass a shipped file configures: by folder, with chat's safety/pipeline files apart."""
    system, stem = path.parent.name, path.stem
    if system == "serve":
        return importlib.import_module("gensys.serve.config").ServeConfig
    if system == "chat" and stem.startswith("safety"):
        return importlib.import_module("gensys.apps.chat.safety").Config
    if system == "chat" and stem.startswith("pipeline"):
        return importlib.import_module("gensys.apps.chat.pipeline").PipelineConfig
    return importlib.import_module(f"gensys.apps.{system}.config").Config


def test_configs_are_shipped_for_every_system():
    assert {p.parent.name for p in SHIPPED} >= {"compose", "translate", "chat", "caption", "rag", "serve"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_config_loads(path):
    cfg = load_config(config_class(path), path)
    assert type(cfg).__name__ in ("Config", "ServeConfig", "PipelineConfig")
