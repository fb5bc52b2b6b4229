"""The caption predictor's contract: input checks and conversions, n-best output, aligned confidences,
attention probabilities, and `gensys caption predict` on good and bad files."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import struct
import zlib

import pytest
import torch
from PIL import Image

from gensys.apps.caption.attention import cross_attention, word_attention
from gensys.apps.caption.postprocess import token_words
from gensys.apps.caption.predictor import CaptionInputError, CaptionPredictor, load_predictor
from gensys.apps.caption.recipe import predict_main
from gensys.checkpoint import save_checkpoint
from gensys.data.tokenizer import train_bpe
from gensys.errors import DataError
from gensys.models.captioner import Captioner, CaptionerConfig


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A random-weight captioner checkpoint (what `load_predictor` reads); captions are gibberish but real."""
    tok = train_bpe(["a man riding a bike", "a red circle above a blue square", "two dogs play"] * 4, 300)
    torch.manual_seed(0)
    cfg = CaptionerConfig(
        vocab_size=tok.vocab_size,
        encoder="vit",
        image_size=16,
        patch_size=4,
        enc_d_model=32,
        enc_layers=1,
        enc_heads=2,
        enc_d_ff=64,
        d_model=32,
        n_layers=2,
        n_heads=4,
        d_ff=64,
        max_seq_len=16,
        dropout=0.0,
    )
    model = Captioner(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "caption"
    settings = {"preprocess": {"crop_margin": 2}, "decode": {"max_new_tokens": 8, "no_repeat_ngram_size": 0}}
    config = {"family": "captioner", "model": dataclasses.asdict(cfg), "caption": settings}
    save_checkpoint(path, model, config, tok, dtype=torch.float16)
    return path


@pytest.fixture(scope="module")
def pred(ckpt) -> CaptionPredictor:
    return load_predictor(ckpt)


def _jpeg_bytes() -> bytes:
    """A noisy 48x48 JPEG (a few KB, so cutting it in half leaves the header and half the scan data)."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (48, 48, 3), generator=g, dtype=torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _truncated_jpeg() -> bytes:
    data = _jpeg_bytes()
    return data[: len(data) // 2]


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG declaring w x h pixels with no pixel data: tiny on disk, a memory bomb if decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def test_nbest_output_shape_and_order(pred):
    ims = [Image.new("RGB", (20, 24), (10, 200, 30)), Image.new("RGB", (16, 16), (0, 0, 0))]
    out = pred.caption(ims, beam=3, n_best=3)
    assert len(out) == 2
    for nb in out:
        assert 1 <= len(nb) <= 3 and all(set(d) == {"caption", "score"} for d in nb)
        assert all(isinstance(d["caption"], str) and math.isfinite(d["score"]) for d in nb)
        assert [d["score"] for d in nb] == sorted((d["score"] for d in nb), reverse=True)
        assert len({d["caption"] for d in nb}) == len(nb)  # duplicates after post-processing are merged
    # a batch gives each image the result it gets alone
    assert pred.caption(ims[1:], beam=3, n_best=3)[0] == out[1]
    assert pred.caption([], beam=2, n_best=1) == []
    with pytest.raises(CaptionInputError, match="n_best"):
        pred.caption(ims, beam=2, n_best=3)
    with pytest.raises(CaptionInputError, match="beam"):
        pred.caption(ims, beam=0, n_best=1)


def test_bad_inputs_give_clear_errors(pred, tmp_path):
    good = Image.new("RGB", (8, 8))
    with pytest.raises(CaptionInputError, match="list of PIL images"):
        pred.caption(good)
    with pytest.raises(CaptionInputError, match=r"images\[1\] is a str, not a PIL image"):
        pred.caption([good, "cat.jpg"])
    with pytest.raises(CaptionInputError, match=r"images\[0\] is a bytes"):
        pred.caption([_jpeg_bytes()])
    with pytest.raises(CaptionInputError, match="400000000 pixels, more than the limit"):
        pred.caption([Image.new("1", (20000, 20000))])  # 1-bit: 50 MB in memory, 400 M pixels
    with pytest.raises(CaptionInputError, match="no pixels"):
        pred.caption([Image.new("RGB", (0, 5))])
    truncated = Image.open(io.BytesIO(_truncated_jpeg()))  # header fine, data cut: fails when loaded
    with pytest.raises(CaptionInputError, match=r"images\[0\]: broken or truncated"):
        pred.caption([truncated])
    # the same problems as files
    (tmp_path / "notes.jpg").write_text("not an image at all")
    (tmp_path / "cut.jpg").write_bytes(_truncated_jpeg())
    (tmp_path / "huge.png").write_bytes(_png_header_only(20000, 20000))
    with pytest.raises(DataError, match="notes.jpg: not a readable image"):
        pred.caption_files([tmp_path / "notes.jpg"])
    with pytest.raises(DataError, match="cut.jpg: broken or truncated"):
        pred.caption_files([tmp_path / "cut.jpg"])
    with pytest.raises(DataError, match="huge.png: image is .*too large|more than the limit"):
        pred.caption_files([tmp_path / "huge.png"])
    with pytest.raises(DataError, match="image not found"):
        pred.caption_files([tmp_path / "missing.png"])


def test_cmyk_alpha_palette_and_grey_images_are_converted(pred):
    rgb = Image.new("RGB", (24, 24), (0, 128, 255))
    cmyk = rgb.convert("CMYK")
    rgba = Image.new("RGBA", (24, 24), (0, 128, 255, 255))
    clear = Image.new("RGBA", (24, 24), (0, 0, 0, 0))  # transparent -> white, not black
    palette, grey = rgb.convert("P", palette=Image.Palette.ADAPTIVE), rgb.convert("L")
    checked = pred.check_images([rgb, cmyk, rgba, clear, palette, grey])
    assert all(im.mode == "RGB" for im in checked)
    r, g, b = checked[5].split()
    assert r.tobytes() == g.tobytes() == b.tobytes()  # grey -> three equal planes
    px = pred.pixels(checked)
    assert px.shape == (6, 3, 16, 16)
    torch.testing.assert_close(px[1], px[0])  # CMYK -> RGB
    torch.testing.assert_close(px[2], px[0])
    white = pred.pixels([Image.new("RGB", (24, 24), (255, 255, 255))])[0]
    torch.testing.assert_close(px[3], white)
    torch.testing.assert_close(px[4], px[0])  # palette
    assert pred.caption([cmyk, rgba], beam=2, n_best=1) == pred.caption([rgb, rgb], beam=2, n_best=1)


def test_confidences_are_aligned_with_beam_scores(pred):
    """Per-token probabilities used by the fairness rule reproduce each beam hypothesis' log-prob."""
    px = pred.pixels([Image.new("RGB", (16, 16), (90, 30, 200)), Image.new("RGB", (16, 16), (250, 250, 0))])
    from gensys.generate import generate

    out = generate(pred.model, config=pred.generation_config(3, 3), encoder_inputs=(px,))
    hyps = [h.tokens for nb in out.nbest for h in nb]
    owner = [b for b, nb in enumerate(out.nbest) for _ in nb]
    probs = pred.token_probs(pred.model.encode(px), owner, hyps)
    for h, p in zip([h for nb in out.nbest for h in nb], probs):
        lp = sum(math.log(float(p[t, tok])) for t, tok in enumerate(h.tokens))
        assert lp == pytest.approx(h.logprob, abs=1e-3)


@torch.no_grad()
def test_attention_probabilities_reproduce_the_layer_output(pred):
    """Recomputed cross-attention (q/k projections + softmax) times V gives what SDPA computed."""
    model = pred.model
    px = pred.pixels([Image.new("RGB", (16, 16), (10, 20, 30))])
    tokens = pred.tok.encode("a man riding a bike")
    outputs = []
    hook = model.decoder.blocks[1].cross_attn.register_forward_hook(lambda m, a, o: outputs.append(o))
    probs = cross_attention(model, px, tokens, pred.tok.bos_id)  # (L, H, T, N)
    hook.remove()
    attn = model.decoder.blocks[1].cross_attn
    v = attn._heads(attn.v_proj(model.encode(px)))  # (1, H, N, Dh)
    mixed = (probs[1][None] @ v).transpose(1, 2).reshape(1, len(tokens), -1)
    torch.testing.assert_close(attn.o_proj(mixed), outputs[0][:, : len(tokens)], atol=1e-5, rtol=1e-4)
    assert probs.shape == (2, 4, len(tokens), 1 + 16) and torch.allclose(probs.sum(-1), torch.ones(()))
    words = token_words(pred.tok, tokens)
    maps = word_attention(model, px, tokens, [ps for _, ps in words], pred.tok.bos_id)
    assert maps.shape == (len(words), 4, 4) and torch.allclose(maps.sum((1, 2)), torch.ones(len(words)))


def test_predict_cli_writes_jsonl_and_handles_bad_files(ckpt, tmp_path):
    Image.new("RGB", (30, 20), (200, 0, 0)).save(tmp_path / "red.png")
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    (tmp_path / "bad.jpg").write_bytes(_truncated_jpeg())
    out = tmp_path / "out" / "preds.jsonl"
    good = [str(tmp_path / "red.png"), str(tmp_path / "cmyk.jpg")]
    assert predict_main(["--ckpt", str(ckpt), "--images", *good, "--out", str(out), "--n-best", "2"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"] for r in rows] == good
    assert all(isinstance(r["caption"], str) and isinstance(r["score"], float) for r in rows)
    assert all(1 <= len(r["nbest"]) <= 2 and r["nbest"][0]["caption"] == r["caption"] for r in rows)
    with pytest.raises(DataError, match="bad.jpg"):  # default: a bad file stops the run, nothing written
        predict_main(
            ["--ckpt", str(ckpt), "--images", *good, str(tmp_path / "bad.jpg"), "--out", str(tmp_path / "x")]
        )
    assert not (tmp_path / "x").exists()
    skip = tmp_path / "skip.jsonl"
    code = predict_main(
        [
            "--ckpt",
            str(ckpt),
            "--images",
            str(tmp_path / "bad.jpg"),
            good[0],
            "--out",
            str(skip),
            "--on-error",
            "skip",
        ]
    )
    rows = [json.loads(line) for line in skip.read_text().splitlines()]
    assert code == 2 and "truncated" in rows[0]["error"] and rows[1]["image"] == good[0]
