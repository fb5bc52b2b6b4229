"""The decoding benchmark's README command runs end to end (slow: builds two ~10M-parameter models)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_generate_runs():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_generate.py"), "--threads", "1", "--repeats", "1",
           "--new-tokens", "4", "--prompt-len", "8", "--long-prompt-len", "16"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True).stdout
    assert out.count("x   (") == 10  # 5 cases x 2 models, each with a ratio
    assert "cut 4.0x" in out
