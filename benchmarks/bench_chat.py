"""How long a chat training config takes on this machine, stage by stage, from a few steps of each.

Runs every stage of the config (same data caps, model and batch sizes) for `--steps` optimizer steps
(`--iterations` PPO iterations, `--prompts` comparison prompts per subset) in a temporary run directory,
timing each optimizer step, each evaluation and each stage's setup (data reading, tokenising, loading).
The full config's time is then estimated per stage as

    setup + max_steps x median step time + evaluations x mean evaluation time     (Trainer stages)
    setup + iterations x median iteration time                                     (PPO)
    time per prompt x prompts                                                      (comparison)

Step times come from the median of the timed steps after the first (which pays for allocations). The same
estimate is also made from process CPU time (`cpu_estimate_s`): on a machine shared with other jobs, wall
time measures the load more than the code, while CPU seconds / threads bounds what an idle machine needs.

    .venv/bin/python benchmarks/bench_chat.py --config configs/chat/small.yaml
    taskset -c 0,1 python benchmarks/bench_chat.py --config configs/chat/small.yaml --threads 2   # 2 cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from gensys.apps.chat import recipe
from gensys.apps.chat.recipe import load_chat_config
from gensys.train import Trainer

TRAINER_STAGES = ("pretrain", "sft", "reward", "dpo")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/chat/small.yaml")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps timed per Trainer stage")
    p.add_argument("--iterations", type=int, default=3, help="PPO iterations timed")
    p.add_argument("--prompts", type=int, default=8, help="comparison prompts per subset timed")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--out", default="", help="write the JSON result here too")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    full = load_chat_config(args.config)

    step_times: list[float] = []
    eval_times: list[float] = []
    step_cpu: list[float] = []
    eval_cpu: list[float] = []
    orig_step, orig_eval = Trainer.train_step, Trainer.evaluate

    def timed_step(self):  # measure the trainer's own step, nothing around it
        t, c = time.perf_counter(), time.process_time()
        out = orig_step(self)
        step_times.append(time.perf_counter() - t)
        step_cpu.append(time.process_time() - c)
        return out

    def timed_eval(self):
        t, c = time.perf_counter(), time.process_time()
        out = orig_eval(self)
        eval_times.append(time.perf_counter() - t)
        eval_cpu.append(time.process_time() - c)
        return out

    def estimate(wall: float, steps: list[float], evals: list[float], n_steps: int, n_evals: int) -> float:
        median = statistics.median(steps[1:] or steps)
        setup = wall - sum(steps) - sum(evals)
        return setup + n_steps * median + n_evals * (statistics.mean(evals) if evals else 0.0)

    Trainer.train_step, Trainer.evaluate = timed_step, timed_eval
    report: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"run_dir={tmp}/run", "export_dir="]
        for st in TRAINER_STAGES:
            overrides += [
                f"{st}.train.max_steps={args.steps}",
                f"{st}.train.eval_every=0",
                f"{st}.train.save_every=0",
                f"{st}.train.warmup_steps=1",
                f"{st}.train.progress=false",
                f"{st}.train.plot=false",
            ]
        overrides += [
            f"ppo.iterations={args.iterations}",
            "ppo.save_every=0",
            f"compare.hh_prompts={min(args.prompts, full.compare.hh_prompts)}",
            f"compare.user_prompts={min(args.prompts, full.compare.user_prompts)}",
        ]
        cfg = load_chat_config(args.config, overrides)
        t, c = time.perf_counter(), time.process_time()
        tok = recipe.ensure_tokenizer(cfg)
        report["tokenizer"] = {
            "estimate_s": time.perf_counter() - t,
            "cpu_estimate_s": time.process_time() - c,
        }
        for stage, run in recipe.RUNNERS.items():
            for buf in (step_times, eval_times, step_cpu, eval_cpu):
                buf.clear()
            t, c = time.perf_counter(), time.process_time()
            run(cfg, tok)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            if stage in TRAINER_STAGES:
                tc = getattr(full, stage).train
                evals = (tc.max_steps // tc.eval_every if tc.eval_every else 0) + 1
                report[stage] = {
                    "median_step_s": statistics.median(step_times[1:] or step_times),
                    "estimate_s": estimate(wall, step_times, eval_times, tc.max_steps, evals),
                    "cpu_estimate_s": estimate(cpu, step_cpu, eval_cpu, tc.max_steps, evals),
                }
            elif stage == "ppo":
                lines = (Path(cfg.run_dir) / "ppo" / "metrics.jsonl").read_text().splitlines()
                secs = [json.loads(x)["sec"] for x in lines]
                est = estimate(wall, secs, [], full.ppo.iterations, 0)
                # the loop times iterations in wall time only: split the stage's CPU time the same way
                report[stage] = {
                    "median_iteration_s": statistics.median(secs[1:] or secs),
                    "estimate_s": est,
                    "cpu_estimate_s": cpu / wall * est,
                }
            else:
                n = cfg.compare.hh_prompts + cfg.compare.user_prompts
                n_full = full.compare.hh_prompts + full.compare.user_prompts
                report[stage] = {
                    "timed_prompts": n,
                    "estimate_s": wall * n_full / max(n, 1),
                    "cpu_estimate_s": cpu * n_full / max(n, 1),
                }
            print(f"{stage}: {json.dumps(report[stage])}", file=sys.stderr, flush=True)
    Trainer.train_step, Trainer.evaluate = orig_step, orig_eval
    total = sum(r["estimate_s"] for r in report.values())
    cpu_total = sum(r["cpu_estimate_s"] for r in report.values())
    result = {
        "config": args.config,
        "threads": torch.get_num_threads(),
        "stages": report,
        "estimated_total_min": round(total / 60, 1),
        "estimated_cpu_min": round(cpu_total / 60, 1),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
