"""What a run leaves behind for people: a progress bar, a JSONL metrics log, a loss plot, TensorBoard events.

Only rank 0 writes. The JSONL log is the source of truth: one JSON object per line with `step` plus either
training figures (`loss`, `lr`, `grad_norm`, `tok_per_s`, ...) or evaluation figures (`val_loss`, ...). The
plot is redrawn from it, so a resumed run's picture shows the whole history.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from gensys.data.atomic import atomic_write

__all__ = ["MetricsLog", "Progress", "read_metrics", "plot_losses"]


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl (an unfinished last line, from a killed run, is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class MetricsLog:
    """Append-only JSONL log (+ optional TensorBoard) of training and evaluation figures."""

    def __init__(self, path: str | os.PathLike, *, enabled: bool = True, tensorboard_dir: str | None = None):
        self.path = Path(path)
        self.enabled = enabled
        self._tb = None
        if enabled and tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # torch ships the writer, the `tensorboard` package provides the format
                raise ImportError(
                    "train.tensorboard=true needs the `tensorboard` package (pip install tensorboard)"
                ) from e
            self._tb = SummaryWriter(tensorboard_dir)

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (a killed run logged steps after its last checkpoint; they are redone)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        atomic_write(self.path, lambda p: p.write_text(text, encoding="utf-8"))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        if self._tb is not None:
            step = int(record["step"])
            for k, v in record.items():
                if k != "step" and isinstance(v, int | float) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def plot_losses(metrics_path: str | os.PathLike, png_path: str | os.PathLike) -> Path | None:
    """Draw train loss (and every `val_*loss` metric) against step into a PNG; None if nothing to draw."""
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val_keys = sorted({k for r in records for k in r if k.startswith("val_") and k.endswith("loss")})
    if not train and not val_keys:
        return None
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers or in CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    for k in val_keys:
        pts = [(r["step"], r[k]) for r in records if k in r]
        ax.plot(*zip(*pts), marker="o", markersize=3, label=k.replace("_", " "))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    atomic_write(png_path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return png_path


class Progress:
    """tqdm bar over optimizer steps showing loss, tokens/s and lr; tqdm adds the ETA. Rank 0 only."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def update(self, n: int, **figures: float) -> None:
        if self._bar is None:
            return
        self._bar.update(n)
        if figures:
            self._bar.set_postfix({k: _short(v) for k, v in figures.items()}, refresh=False)

    def write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _short(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.4g}"
