"""A run killed by SIGKILL between checkpoints, then resumed, logs exactly the uninterrupted run's losses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).with_name("train_kill_script.py")


def _records(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]


def _ckpt_step(out: Path) -> int:
    try:
        return json.loads((out / "last" / "config.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _run(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(SCRIPT), *args], env=env, **kw)


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    full = _run(str(full_dir))
    victim = _run(str(killed_dir), "0.1")
    deadline = time.monotonic() + 120
    killed_at = None
    while time.monotonic() < deadline and victim.poll() is None:
        step = _ckpt_step(killed_dir)
        logged = [r["step"] for r in _records(killed_dir)]
        # Kill after the step-6 checkpoint (mid-epoch: an epoch is 5 steps) once a later step was logged.
        if step == 6 and logged and max(logged) > 6:
            os.kill(victim.pid, signal.SIGKILL)
            killed_at = max(logged)
            break
        time.sleep(0.01)
    victim.wait(30)
    assert killed_at is not None and victim.returncode == -signal.SIGKILL, "the run was not killed mid-way"
    assert full.wait(120) == 0

    resumed = _run(str(killed_dir))
    assert resumed.wait(120) == 0
    want, got = _records(full_dir), _records(killed_dir)
    assert [r["step"] for r in got] == list(range(1, 13))  # steps after the checkpoint were redone once
    assert [r["loss"] for r in got] == [r["loss"] for r in want]  # bit-identical, not approximately
    assert [r["grad_norm"] for r in got] == [r["grad_norm"] for r in want]
