"""Caption data: splits from TSV / COCO JSON, caption normalisation, a decoded-image cache, batches.

    captions per image  <- read_caption_tsv / read_coco_captions (+ optional split list)
    images              <- ImageSource (tar or folder) -> resize shorter side, centre crop -> uint8 cache
    training batch      <- random crop + horizontal flip (with "left" <-> "right" in the captions)

JPEGs are decoded once into a uint8 tensor file under `data.cache_dir` (runs/, never committed), so epochs
read tensors instead of re-decoding images.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from gensys.apps.caption.config import DataConfig
from gensys.data.batching import pad_batch, shift_labels
from gensys.data.readers import (
    ImageSource,
    data_dir,
    open_text,
    read_caption_tsv,
    read_coco_captions,
    read_lines,
    to_rgb,
)
from gensys.data.tokenizer import Tokenizer
from gensys.errors import DataError
from gensys.metrics import coco_tokenize
from gensys.train.losses import token_cross_entropy

log = logging.getLogger(__name__)

CACHE_VERSION = 1

# ---------------------------------------------------------------------------------------------------------
# captions


def normalize_caption(text: str) -> str:
    """Training/eval form of a caption: coco-caption's tokenisation (PTB tokens, lower case, no punctuation).

    Training on exactly the tokens the metrics compare keeps the model from spending capacity on spacing and
    full stops; `postprocess.finish` restores casing and punctuation for display.
    """
    return coco_tokenize(text)


_SWAP = {"left": "right", "right": "left", "lefthand": "righthand", "righthand": "lefthand"}


def flip_caption(text: str) -> str:
    """The caption of the mirrored image: whole words "left" and "right" trade places (case kept)."""

    def swap(m: re.Match[str]) -> str:
        word = m.group(0)
        new = _SWAP[word.lower()]
        return new.capitalize() if word[0].isupper() else new

    return re.sub(r"\b(left|right|lefthand|righthand)\b", swap, text, flags=re.IGNORECASE)


def _resolve(root: Path, rel: str, split: str) -> Path:
    p = Path(rel.replace("{split}", split)).expanduser()
    path = p if p.is_absolute() else root / p
    if not path.exists():
        raise DataError(f"{path} not found (set --data-dir or GENSYS_DATA, or data.* in the config)")
    return path


def load_split(cfg: DataConfig, split: str, root: str | Path | None = None) -> dict[str, list[str]]:
    """{image file name: [captions]} of `split`, in name order; images without captions are dropped.

    TSV with a split column: that column selects. COCO JSON / Flickr8k token file: `{split}` in the path or
    `split_list` selects (without either, the whole file is the split).
    """
    root = data_dir(root)
    cap_path = _resolve(root, cfg.captions, split)
    by_placeholder = "{split}" in cfg.captions
    if cap_path.suffix.lower() == ".json":
        caps = read_coco_captions(cap_path)
    else:
        with_column = _tsv_has_split_column(cap_path)
        caps = read_caption_tsv(cap_path, split=split if with_column and not by_placeholder else None)
    if cfg.split_list:
        keep = {ln.strip() for ln in read_lines(_resolve(root, cfg.split_list, split)) if ln.strip()}
        caps = {k: v for k, v in caps.items() if k in keep}
    out = {k: caps[k] for k in sorted(caps) if caps[k]}
    if not out:
        raise DataError(f"{cap_path}: no captions for split {split!r}")
    return out


def _tsv_has_split_column(path: Path) -> bool:
    with open_text(path) as f:
        return f.readline().split("\t")[:2] == ["split", "image"]


# ---------------------------------------------------------------------------------------------------------
# images


def resize_crop(im: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is `size` (bicubic), then crop the centre `size` x `size` square."""
    im = to_rgb(im)
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def pil_to_uint8(im: Image.Image) -> Tensor:
    """RGB Pillow image -> uint8 tensor (3, H, W)."""
    t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    return t.view(im.size[1], im.size[0], 3).permute(2, 0, 1).contiguous()


def normalize_images(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (B, 3, H, W) -> float (B, 3, H, W) scaled to [0, 1] and standardised per channel."""
    x = images.float() / 255.0
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)[None, :, None, None]
    s = torch.tensor(std, dtype=x.dtype, device=x.device)[None, :, None, None]
    return (x - m) / s


def center_crop(images: Tensor, size: int) -> Tensor:
    """Centre `size` x `size` crop of (B, C, H, W)."""
    h, w = images.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top : top + size, left : left + size]


def cache_path(cfg: DataConfig, split: str, size: int, names: list[str], root: Path) -> Path:
    """Cache file for these images at this size; the name changes whenever the inputs do."""
    src = Path(cfg.images).expanduser()
    src = src if src.is_absolute() else root / src
    stat = src.stat()
    key = json.dumps([CACHE_VERSION, str(src.resolve()), stat.st_size, stat.st_mtime_ns, size, names])
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return Path(cfg.cache_dir) / f"images_{split}_{size}px_{digest}.pt"


def build_image_cache(
    source: ImageSource, names: list[str], size: int, out: Path | None = None
) -> tuple[list[str], Tensor]:
    """Decode `names` once to uint8 (N, 3, size, size); write {"names", "images"} to `out` if given."""
    images = torch.empty(len(names), 3, size, size, dtype=torch.uint8)
    t0 = time.perf_counter()
    for i, name in enumerate(names):
        images[i] = pil_to_uint8(resize_crop(source.open(name), size))
        if (i + 1) % 1000 == 0:
            log.info("decoded %d/%d images (%.0fs)", i + 1, len(names), time.perf_counter() - t0)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        torch.save({"names": names, "images": images}, tmp)
        tmp.replace(out)
    return names, images


def load_image_cache(path: Path) -> tuple[list[str], Tensor]:
    """Read a cache written by `build_image_cache` (our own file, loaded with weights_only=True)."""
    obj = torch.load(path, weights_only=True)
    return list(obj["names"]), obj["images"]


@dataclass
class SplitData:
    """One split in memory: image names, their cached uint8 images, and their captions."""

    names: list[str]
    images: Tensor  # (N, 3, S, S) uint8, S = image_size + crop_margin
    captions: list[list[str]]  # raw captions per image (references for evaluation)


def load_split_data(
    cfg: DataConfig, split: str, size: int, root: str | Path | None = None, max_images: int = 0
) -> SplitData:
    """Captions of `split` and its images from the cache (built on first use)."""
    root_dir = data_dir(root)
    caps = load_split(cfg, split, root_dir)
    src_path = Path(cfg.images).expanduser()
    source = ImageSource(src_path if src_path.is_absolute() else root_dir / src_path)
    missing = [n for n in caps if n not in source]
    if missing:
        log.warning("%d images of split %s have captions but no image file (e.g. %s); skipped",
                    len(missing), split, missing[0])  # fmt: skip
    names = [n for n in caps if n in source]
    if max_images:
        names = names[:max_images]
    if not names:
        raise DataError(f"split {split!r}: none of its captioned images is in {source.path}")
    path = cache_path(cfg, split, size, names, root_dir)
    if path.is_file():
        cached_names, images = load_image_cache(path)
        if cached_names != names:  # a stale file under a colliding name: rebuild
            cached_names, images = build_image_cache(source, names, size, path)
    else:
        log.info("decoding %d %s images to %s", len(names), split, path)
        cached_names, images = build_image_cache(source, names, size, path)
    return SplitData(names, images, [caps[n] for n in names])


# ---------------------------------------------------------------------------------------------------------
# training batches


def encode_caption(tok: Tokenizer, text: str, max_tokens: int) -> list[int]:
    """[bos] + BPE tokens (cut to max_tokens) + [eos] of a normalised caption."""
    return [tok.bos_id, *tok.encode(text)[:max_tokens], tok.eos_id]


class CaptionSet:
    """Items per image: (image index, captions as ids, the same captions for the flipped image)."""

    def __init__(self, data: SplitData, tok: Tokenizer, max_tokens: int) -> None:
        self.data = data
        self.items: list[tuple[int, list[list[int]], list[list[int]]]] = []
        for i, caps in enumerate(data.captions):
            norm = [normalize_caption(c) for c in caps]
            norm = [c for c in norm if c] or [""]
            ids = [encode_caption(tok, c, max_tokens) for c in norm]
            flipped = [encode_caption(tok, flip_caption(c), max_tokens) for c in norm]
            self.items.append((i, ids, flipped))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, list[list[int]], list[list[int]]]:
        return self.items[i]


class Collator:
    """Items -> batch dict for the captioner loss.

    images (B, 3, S, S) float; input_ids / attention_mask / labels (C, T) over the C captions of the batch;
    img_index (C,) maps each caption to its image, so an image is encoded once for all its captions.
    Training crops at random and flips with probability `hflip` (using the flipped captions); evaluation
    takes the centre crop and all captions. Randomness uses torch's global RNG, which the trainer saves and
    restores on resume.
    """

    def __init__(
        self,
        images: Tensor,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        pad_id: int,
        *,
        train: bool,
        hflip: float = 0.5,
        captions_per_image: int = 0,
        tag_vocab: int = 0,
        tag_ignore: Sequence[int] = (),
    ) -> None:
        self.images, self.size, self.mean, self.std, self.pad_id = images, size, mean, std, pad_id
        self.train, self.hflip, self.per_image = train, hflip, captions_per_image
        self.tag_vocab, self.tag_ignore = tag_vocab, list(tag_ignore)

    def __call__(self, items: list[tuple[int, list[list[int]], list[list[int]]]]) -> dict[str, Tensor]:
        crops, seqs, owner = [], [], []
        tags = torch.zeros(len(items), self.tag_vocab) if self.tag_vocab else None  # (B, V) multi-hot
        full = self.images.shape[-1]
        for b, (idx, ids, flipped) in enumerate(items):
            img = self.images[idx]  # (3, S', S') uint8
            caps = ids
            if self.train:
                top, left = (int(v) for v in torch.randint(0, full - self.size + 1, (2,)))
                img = img[:, top : top + self.size, left : left + self.size]
                if self.hflip > 0 and float(torch.rand(())) < self.hflip:
                    img, caps = img.flip(-1), flipped
            else:
                img = center_crop(img, self.size)
            if tags is not None:  # every caption of the image, before sampling a few for the LM loss
                tags[b, sorted({t for c in caps for t in c})] = 1.0
            if self.train and self.per_image and len(caps) > self.per_image:
                pick = torch.randperm(len(caps))[: self.per_image].tolist()
                caps = [caps[j] for j in pick]
            crops.append(img)
            seqs.extend(caps)
            owner.extend([b] * len(caps))
        ids, mask = pad_batch(seqs, self.pad_id)  # (C, T)
        extra = {}
        if tags is not None:
            tags[:, self.tag_ignore] = 0.0  # bos / eos / pad are in every caption
            extra["tags"] = tags
        return {
            **extra,
            "images": normalize_images(torch.stack(crops), self.mean, self.std),  # (B, 3, S, S)
            "input_ids": ids,
            "attention_mask": mask,
            "labels": shift_labels(ids, mask),
            "img_index": torch.tensor(owner, dtype=torch.long),
        }


def caption_loss(
    model: Any, batch: dict[str, Tensor], *, label_smoothing: float = 0.0, tag_weight: float = 0.0
):
    """Trainer loss_fn: next-token cross-entropy of every caption given its image (summed, with count).

    `tag_weight` > 0 adds the tag head's loss (binary cross-entropy of "token occurs in this image's
    captions", summed over the vocabulary, mean over images) times `tag_weight`, per target token: the
    trainer divides the sum by the token count, so the step's loss is CE + tag_weight * tag loss.
    """
    image_memory = model.encode(batch["images"])  # (B, N, D)
    memory = image_memory.index_select(0, batch["img_index"])  # (C, N, D): one row per caption
    logits = model.decode(batch["input_ids"], memory, attention_mask=batch["attention_mask"])  # (C, T, V)
    loss_sum, n = token_cross_entropy(logits, batch["labels"], label_smoothing=label_smoothing)
    if not tag_weight:
        return loss_sum, n, {}
    tag_logits = model.tag_logits(image_memory).float()  # (B, V)
    tags = batch["tags"]
    tag_loss = F.binary_cross_entropy_with_logits(tag_logits, tags, reduction="sum") / tags.shape[0]
    return loss_sum + tag_weight * tag_loss * n, n, {"tag_loss": float(tag_loss.detach())}


def mismatched_caption_loss(model: Any, batch: dict[str, Tensor]):
    """`caption_loss` with every caption paired with the next image of its batch (a wrong one).

    The difference to the real loss ("image gain", nats per token) says how much the decoder uses the
    image; a captioner whose encoder collapsed scores the same either way.
    """
    images = batch["images"]
    return caption_loss(model, {**batch, "images": images.roll(1, dims=0)})


__all__ = [
    "CaptionSet",
    "Collator",
    "SplitData",
    "build_image_cache",
    "caption_loss",
    "center_crop",
    "encode_caption",
    "flip_caption",
    "load_image_cache",
    "load_split",
    "load_split_data",
    "mismatched_caption_loss",
    "normalize_caption",
    "normalize_images",
    "pil_to_uint8",
    "resize_crop",
]
