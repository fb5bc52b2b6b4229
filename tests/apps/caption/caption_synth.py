"""Synthetic captioning data drawn by the tests: coloured shapes with generated captions."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (235, 205, 20)}
SHAPES = ("circle", "square", "triangle")


def _draw(d: ImageDraw.ImageDraw, shape: str, colour: tuple[int, int, int], cx: int, cy: int, r: int) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        d.ellipse(box, fill=colour)
    elif shape == "square":
        d.rectangle(box, fill=colour)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)


def make_example(rng: random.Random, size: int = 36) -> tuple[Image.Image, list[str]]:
    """Two shapes in a row or a column, and captions saying which is where."""
    (c1, c2), (s1, s2) = rng.sample(list(COLOURS), 2), (rng.choice(SHAPES), rng.choice(SHAPES))
    im = Image.new("RGB", (size, size), (245, 245, 245))
    d = ImageDraw.Draw(im)
    r, m = 6, size // 2
    j = lambda: rng.randint(-1, 1)  # noqa: E731 - a little jitter so images differ
    if rng.random() < 0.5:  # first shape above the second
        _draw(d, s1, COLOURS[c1], m + j(), m - 9 + j(), r)
        _draw(d, s2, COLOURS[c2], m + j(), m + 9 + j(), r)
        caps = [f"a {c1} {s1} above a {c2} {s2}", f"a {c2} {s2} below a {c1} {s1}"]
    else:  # first shape to the left of the second
        _draw(d, s1, COLOURS[c1], m - 9 + j(), m + j(), r)
        _draw(d, s2, COLOURS[c2], m + 9 + j(), m + j(), r)
        caps = [f"a {c1} {s1} to the left of a {c2} {s2}", f"a {c2} {s2} to the right of a {c1} {s1}"]
    return im, caps


def write_dataset(root: Path, n_train: int, n_dev: int, seed: int = 0) -> Path:
    """root/images/*.png + root/captions.tsv in the Flickr8k TSV layout (split, image, idx, caption)."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = ["split\timage\tcaption_idx\tcaption"]
    for i in range(n_train + n_dev):
        split = "train" if i < n_train else "dev"
        im, caps = make_example(rng)
        name = f"{split}_{i:04d}.png"
        im.save(root / "images" / name)
        rows += [f"{split}\t{name}\t{k}\t{c.capitalize()} ." for k, c in enumerate(caps)]
    (root / "captions.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root
