"""Length-bucketed batches: every example once, similar lengths inside a batch, a fair sample up front."""

from __future__ import annotations

import random

from gensys.apps.compose.data import LengthBuckets


def test_length_buckets_cover_everything_and_any_prefix_is_a_fair_sample():
    rng = random.Random(3)
    examples = [([0] * rng.randint(5, 400), 1) for _ in range(2000)]
    lb = LengthBuckets(examples, batch_size=16, seed=0)  # pools of 800 examples
    seen = sorted(id(x) for batch in lb for x in batch)
    assert seen == sorted(id(x) for x in examples)
    spread = [max(len(x[0]) for x in b) - min(len(x[0]) for x in b) for b in lb]
    assert sum(spread) / len(spread) < 60  # vs ~260 for random batches of lengths 5..400
    # The first 20 batches (what the trainer's eval_steps reads) are not the shortest emails.
    mean_all = sum(len(x[0]) for x in examples) / len(examples)
    first = [len(x[0]) for b in list(lb)[:20] for x in b]
    assert abs(sum(first) / len(first) - mean_all) < 0.25 * mean_all
