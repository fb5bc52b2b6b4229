"""Caption data: normalisation, flip with left/right swap, split readers, the image cache, batches."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from gensys.apps.caption.config import DataConfig
from gensys.apps.caption.data import (
    CaptionSet,
    Collator,
    flip_caption,
    load_split,
    load_split_data,
    normalize_caption,
    pil_to_uint8,
    resize_crop,
)
from gensys.data.batching import IGNORE_INDEX
from gensys.data.tokenizer import train_bpe
from gensys.errors import DataError


def test_flip_swaps_left_and_right_words_only():
    assert flip_caption("a dog to the left of a cat") == "a dog to the right of a cat"
    assert flip_caption("Right hand up , left foot down") == "Left hand up , right foot down"
    assert flip_caption("a bright leftover copyright") == "a bright leftover copyright"  # not whole words
    assert flip_caption(flip_caption("left right lefthand")) == "left right lefthand"


def test_normalize_caption_uses_coco_tokens():
    assert normalize_caption("A Dog , running in the snow .") == "a dog running in the snow"
    assert normalize_caption("  Two children's toys!  ") == "two children 's toys"


def test_resize_crop_keeps_the_centre_of_non_square_images():
    im = Image.new("RGB", (60, 20), (0, 0, 255))
    im.paste((255, 0, 0), (20, 0, 40, 20))  # red band in the middle third
    out = resize_crop(im, 10)
    assert out.size == (10, 10)
    t = pil_to_uint8(out)
    assert t.shape == (3, 10, 10) and t.dtype == torch.uint8
    assert t[0].float().mean() > 200 and t[2].float().mean() < 40  # only the red centre remains
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent: composited on white
    assert pil_to_uint8(resize_crop(rgba, 8)).min() == 255


def _tsv(path: Path, rows: list[tuple[str, str, str]]) -> None:
    lines = ["split\timage\tcaption_idx\tcaption"] + [
        f"{s}\t{im}\t{i}\t{c}" for i, (s, im, c) in enumerate(rows)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_load_split_tsv_coco_json_and_token_file(tmp_path, monkeypatch):
    _tsv(
        tmp_path / "c.tsv",
        [("train", "b.jpg", "B one"), ("dev", "a.jpg", "A one"), ("train", "b.jpg", "B two")],
    )
    cfg = DataConfig(captions="c.tsv")
    assert load_split(cfg, "train", tmp_path) == {"b.jpg": ["B one", "B two"]}
    assert load_split(cfg, "dev", tmp_path) == {"a.jpg": ["A one"]}
    monkeypatch.setenv("GENSYS_DATA", str(tmp_path))  # no --data-dir: the environment names the root
    assert load_split(cfg, "dev") == {"a.jpg": ["A one"]}
    with pytest.raises(DataError, match="no captions for split 'test'"):
        load_split(cfg, "test", tmp_path)
    coco = {
        "images": [{"id": 1, "file_name": "x.jpg"}, {"id": 2, "file_name": "y.jpg"}],
        "annotations": [{"image_id": 2, "caption": "a y"}, {"image_id": 1, "caption": "an x"}],
    }
    (tmp_path / "caps_val.json").write_text(json.dumps(coco))
    cfg = DataConfig(captions="caps_{split}.json")
    assert load_split(cfg, "val", tmp_path) == {"x.jpg": ["an x"], "y.jpg": ["a y"]}
    # Flickr8k's original token file has no split column: a split list selects the images.
    (tmp_path / "tok.txt").write_text("p.jpg#0\tp zero\nq.jpg#0\tq zero\np.jpg#1\tp one\n")
    (tmp_path / "list_train.txt").write_text("p.jpg\n")
    cfg = DataConfig(captions="tok.txt", split_list="list_{split}.txt")
    assert load_split(cfg, "train", tmp_path) == {"p.jpg": ["p zero", "p one"]}
    with pytest.raises(DataError, match="not found"):
        load_split(DataConfig(captions="nope.tsv"), "train", tmp_path)


def test_cache_from_tar_equals_folder_and_is_reused(tmp_path):
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (16, 12), colour).save(img_dir / f"{i}.png")
    with tarfile.open(tmp_path / "imgs.tar", "w") as tf:
        for p in sorted(img_dir.iterdir()):
            tf.add(p, arcname=f"images/{p.name}")
    _tsv(
        tmp_path / "c.tsv",
        [("train", f"{i}.png", f"colour {i}") for i in range(3)] + [("train", "gone.png", "x")],
    )
    folder = DataConfig(images="imgs", captions="c.tsv", cache_dir=str(tmp_path / "cache"))
    tar = DataConfig(images="imgs.tar", captions="c.tsv", cache_dir=str(tmp_path / "cache"))
    a = load_split_data(folder, "train", 10, tmp_path)
    b = load_split_data(tar, "train", 10, tmp_path)
    assert a.names == b.names == ["0.png", "1.png", "2.png"]  # the image without a file is skipped
    assert torch.equal(a.images, b.images) and a.images.shape == (3, 3, 10, 10)
    assert a.images[1, 1].min() == 255 and a.images[1, 0].max() == 0  # green stays green
    caches = sorted((tmp_path / "cache").glob("*.pt"))
    assert len(caches) == 2  # one per source
    stamp = [p.stat().st_mtime_ns for p in caches]
    c = load_split_data(tar, "train", 10, tmp_path, max_images=0)
    assert torch.equal(c.images, b.images) and [p.stat().st_mtime_ns for p in caches] == stamp  # reused


def _toy_set():
    images = torch.zeros(2, 3, 6, 6, dtype=torch.uint8)
    images[0, 0, :, :3] = 255  # image 0: red left half
    images[1, 2] = 200
    from gensys.apps.caption.data import SplitData

    data = SplitData(["a", "b"], images, [["A ball on the left ."], ["Blue , all blue .", "So blue ."]])
    tok = train_bpe(
        ["a ball on the left", "a ball on the right", "blue all blue", "so blue"], 300, min_frequency=1
    )
    return data, tok


def test_collator_flip_swaps_image_and_caption_together():
    data, tok = _toy_set()
    ds = CaptionSet(data, tok, max_tokens=10)
    mean, std = [0.0] * 3, [1.0] * 3
    flip = Collator(data.images, 6, mean, std, tok.pad_id, train=True, hflip=1.0)
    batch = flip([ds[0], ds[1]])
    assert batch["images"].shape == (2, 3, 6, 6)
    assert batch["images"][0, 0, :, 3:].min() == 1.0 and batch["images"][0, 0, :, :3].max() == 0.0  # mirrored
    assert batch["img_index"].tolist() == [0, 1, 1]
    texts = tok.decode_batch(batch["input_ids"].tolist())
    assert texts[0] == "a ball on the right" and texts[1:] == ["blue all blue", "so blue"]
    labels, ids, mask = batch["labels"], batch["input_ids"], batch["attention_mask"]
    assert torch.equal(labels[:, :-1][mask[:, 1:]], ids[:, 1:][mask[:, 1:]])  # next-token targets
    assert (labels[~mask] == IGNORE_INDEX).all() and ids[0, 0] == tok.bos_id
    keep = Collator(data.images, 4, mean, std, tok.pad_id, train=False)(ds.items)
    assert torch.equal(keep["images"][0], data.images[0, :, 1:5, 1:5].float() / 255)  # centre crop, no flip
    assert tok.decode(keep["input_ids"][0].tolist()) == "a ball on the left"
    one = Collator(data.images, 6, mean, std, tok.pad_id, train=True, hflip=0.0, captions_per_image=1)
    assert one(ds.items)["input_ids"].shape[0] == 2  # one caption per image


def test_tags_cover_every_caption_of_the_image_and_the_tag_loss_adds_as_documented():
    """The tag targets are the tokens of all of an image's captions (flipped with the image, specials
    excluded, even when only some captions are sampled for the LM loss); caption_loss adds the weighted
    BCE per target token."""
    from gensys.apps.caption.data import caption_loss
    from gensys.models.captioner import CaptionerConfig, build_captioner

    data, tok = _toy_set()
    ds = CaptionSet(data, tok, max_tokens=10)
    specials = (tok.bos_id, tok.eos_id, tok.pad_id)
    col = Collator(
        data.images, 6, [0.0] * 3, [1.0] * 3, tok.pad_id, train=True, hflip=1.0, captions_per_image=1,
        tag_vocab=tok.vocab_size, tag_ignore=specials,
    )  # fmt: skip
    batch = col([ds[0], ds[1]])
    assert batch["input_ids"].shape[0] == 2  # one caption per image for the LM loss ...
    want1 = {t for c in ("blue all blue", "so blue") for t in tok.encode(c)}  # ... but tags from both
    assert set(batch["tags"][1].nonzero().flatten().tolist()) == want1
    want0 = set(tok.encode("a ball on the right"))  # flipped image: the flipped caption's words
    assert set(batch["tags"][0].nonzero().flatten().tolist()) == want0
    assert batch["tags"][:, list(specials)].sum() == 0
    torch.manual_seed(0)
    cfg = CaptionerConfig(
        vocab_size=tok.vocab_size, encoder="cnn", image_size=6, cnn_channels=[8], cnn_grid=0, d_model=16,
        n_layers=1, n_heads=2, d_ff=32, max_seq_len=16, dropout=0.0, tag_head=True,
    )  # fmt: skip
    model = build_captioner(cfg).eval()
    ce, n, _ = caption_loss(model, batch)
    total, n2, extra = caption_loss(model, batch, tag_weight=0.5)
    logits = model.tag_logits(model.encode(batch["images"]))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["tags"], reduction="sum") / 2
    assert n2 == n and extra["tag_loss"] == pytest.approx(bce.item(), rel=1e-5)
    torch.testing.assert_close(total, ce + 0.5 * bce * n)
    with pytest.raises(ValueError, match="no tag head"):
        build_captioner(CaptionerConfig(**{**cfg.__dict__, "tag_head": False})).tag_logits(
            torch.zeros(1, 2, 16)
        )


def test_tag_weight_needs_the_tag_head():
    from gensys.apps.caption.config import Config, LossConfig

    with pytest.raises(ValueError, match="needs model.tag_head"):
        Config(loss=LossConfig(tag_weight=0.1))


def test_mismatched_loss_pairs_each_caption_with_another_image():
    from gensys.apps.caption.data import caption_loss, mismatched_caption_loss
    from gensys.models.captioner import CaptionerConfig, build_captioner

    data, tok = _toy_set()
    ds = CaptionSet(data, tok, max_tokens=10)
    batch = Collator(data.images, 6, [0.0] * 3, [1.0] * 3, tok.pad_id, train=False)(ds.items)
    torch.manual_seed(1)
    cfg = CaptionerConfig(
        vocab_size=tok.vocab_size, encoder="cnn", image_size=6, cnn_channels=[8], cnn_grid=0, d_model=16,
        n_layers=1, n_heads=2, d_ff=32, max_seq_len=16, dropout=0.0,
    )  # fmt: skip
    model = build_captioner(cfg).eval()
    swapped = {**batch, "images": batch["images"].flip(0)}  # two images: rolling by one = swapping
    torch.testing.assert_close(mismatched_caption_loss(model, batch)[0], caption_loss(model, swapped)[0])
