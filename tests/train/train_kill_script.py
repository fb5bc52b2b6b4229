"""A tiny training run for the SIGKILL test: `python train_kill_script.py OUT_DIR [SLEEP_S]`.

Checkpoints every 3 steps; the dataset is 5 optimizer steps long, so checkpoints fall mid-epoch. SLEEP_S slows
each batch down so that the test can kill the run between two checkpoints.
"""

from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))

from train_helpers import collate, small_cfg, tiny_gpt2, token_data  # noqa: E402

from gensys.train import ResumableLoader, Trainer, seed_everything  # noqa: E402


class SlowLoader(ResumableLoader):
    def __init__(self, *args, sleep_s: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sleep_s = sleep_s

    def __next__(self):
        time.sleep(self.sleep_s)
        return super().__next__()


def main() -> None:
    torch.set_num_threads(1)  # bit-identical resume needs the same thread count (reduction order)
    out_dir = sys.argv[1]
    sleep_s = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    seed_everything(0)
    model = tiny_gpt2(dropout=0.1)
    cfg = small_cfg(out_dir, max_steps=12, save_every=3, warmup_steps=2, lr=3e-3)
    data = SlowLoader(token_data(20), 2, collate, seed=0, sleep_s=sleep_s)
    Trainer(model, cfg, train_data=data).fit()


if __name__ == "__main__":
    main()
