"""`gensys demo` (what `make demo` runs): serve every system whose checkpoint exists on http://127.0.0.1:8000.

A system whose checkpoint is missing is listed with the exact command that makes it; `--train-missing` runs
those commands first (each shows its own progress bar), then serves. `--check` loads everything, prints the
same summary and exits (0 when every system is mounted), which is how CI checks a fresh clone.
"""

from __future__ import annotations

import os
import subprocess
import sys

from gensys.serve.config import SYSTEMS, ServeConfig, repo_root
from gensys.serve.logs import setup_logging
from gensys.serve.main import config_from_args, parser, run, summary
from gensys.serve.systems import TRAIN_COMMANDS, TRAIN_NOTES, Registry


def missing_systems(cfg: ServeConfig) -> list[str]:
    """Systems that are configured but have no checkpoint directory yet."""
    out = []
    for name in SYSTEMS:
        ckpt = cfg.checkpoint(name)
        if ckpt is not None and not ckpt.is_dir():
            out.append(name)
    return out


def train_missing(names: list[str]) -> list[str]:
    """Run each system's demo training command (in the repo root); returns those that failed."""
    failed = []
    for name in names:
        for command in TRAIN_COMMANDS[name]:
            print(f"\n== {name}: {command}", file=sys.stderr, flush=True)
            argv = [sys.executable, "-m", "gensys", *command.split()[1:]]
            rc = subprocess.call(argv, cwd=repo_root(), env={**os.environ, "PYTHONUNBUFFERED": "1"})
            if rc != 0:
                print(
                    f"== {name}: `{command}` failed (exit {rc}); {name} will not be served", file=sys.stderr
                )
                failed.append(name)
                break
    return failed


def demo_main(argv: list[str]) -> int:
    """Entry point of `gensys demo`."""
    p = parser(
        "gensys demo", "Serve all five systems on http://127.0.0.1:8000 (the main job of `make demo`)."
    )
    p.add_argument(
        "--train-missing", action="store_true", help="train the demo checkpoint of each missing system first"
    )
    p.add_argument("--check", action="store_true", help="load the systems, print the summary and exit")
    a = p.parse_args(argv)
    cfg = config_from_args(a)
    missing = missing_systems(cfg)
    if missing and a.train_missing:
        train_missing(missing)
        missing = missing_systems(cfg)
    setup_logging(cfg.log_level, cfg.log_format)
    registry = Registry.load(cfg)
    print(summary(cfg, registry), file=sys.stderr)
    if missing:
        print("\nmissing checkpoints; make them with:", file=sys.stderr)
        for name in missing:
            note = f"    # {TRAIN_NOTES[name]}" if name in TRAIN_NOTES else ""
            for command in TRAIN_COMMANDS[name]:
                print(f"  {command}{note}", file=sys.stderr)
        print("(or run `gensys demo --train-missing`)", file=sys.stderr)
    sys.stderr.flush()
    if a.check:
        registry.close()
        return 0 if len(registry.mounted()) == sum(cfg.checkpoint(s) is not None for s in SYSTEMS) else 1
    run(cfg, registry)
    return 0


__all__ = ["demo_main", "missing_systems", "train_missing"]
