"""Fixtures of the caption tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from caption_synth import write_dataset


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """A small synthetic dataset shared by the caption tests (256 train / 32 dev images)."""
    return write_dataset(tmp_path_factory.mktemp("shapes"), 256, 32)
