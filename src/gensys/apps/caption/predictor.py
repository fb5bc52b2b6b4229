"""The captioning predictor that `gensys caption predict`, `eval` and `gensys serve` call.

    p = load_predictor("models/caption")
    p.caption([PIL.Image.open("dog.jpg")], beam=3, n_best=3)
    # -> [[{"caption": "A dog runs through the grass.", "score": -0.41}, ...]]

Pipeline: validate -> RGB (CMYK, palette, alpha composited on white, 16-bit) -> resize shorter side + centre
crop (the same crop as training's evaluation view) -> normalise -> encoder once -> beam search (n-best with
length-penalised log-prob scores) -> fairness / offensive-term / casing post-processing.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from gensys.apps.caption.config import DecodeConfig, PostConfig, PreprocessConfig
from gensys.apps.caption.data import center_crop, normalize_images, pil_to_uint8, resize_crop
from gensys.apps.caption.postprocess import (
    BLOCKLIST,
    FairnessLexicon,
    bad_words_ids,
    finish,
    postprocess,
    token_words,
)
from gensys.checkpoint import load_checkpoint
from gensys.config import from_dict
from gensys.data.batching import pad_batch
from gensys.data.readers import DEFAULT_MAX_PIXELS, open_image, to_rgb
from gensys.data.tokenizer import Tokenizer
from gensys.errors import CheckpointError, GensysError
from gensys.generate import GenerationConfig, generate
from gensys.models.captioner import Captioner


class CaptionInputError(GensysError, ValueError):
    """An input to the captioner is not a usable image (wrong type, broken, too large, empty)."""


def app_settings(config: dict[str, Any]) -> tuple[PreprocessConfig, DecodeConfig, PostConfig]:
    """The caption section of a checkpoint's config.json (defaults for what it lacks)."""
    sec = config.get("caption") or {}
    return (
        from_dict(PreprocessConfig, sec.get("preprocess", {}), source="config.json caption.preprocess"),
        from_dict(DecodeConfig, sec.get("decode", {}), source="config.json caption.decode"),
        from_dict(PostConfig, sec.get("post", {}), source="config.json caption.post"),
    )


class CaptionPredictor:
    """Captions for lists of images; see the module docstring. Thread-safe for concurrent `caption` calls."""

    def __init__(
        self,
        model: Captioner,
        tokenizer: Tokenizer,
        preprocess: PreprocessConfig | None = None,
        decode: DecodeConfig | None = None,
        post: PostConfig | None = None,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.model = model.to(device).eval()
        self.tok = tokenizer
        self.device = torch.device(device)
        self.pre = preprocess or PreprocessConfig()
        self.dec = decode or DecodeConfig()
        self.post = post or PostConfig()
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.image_size = model.cfg.image_size
        # One position is the start token; learned position tables end at max_seq_len.
        self.max_new_tokens = min(self.dec.max_new_tokens, model.cfg.max_seq_len - 1)
        self.lexicon = FairnessLexicon(tokenizer)
        self.blocklist = {w.lower() for w in (*BLOCKLIST, *self.post.extra_blocklist)}
        self._bad_ids = (
            bad_words_ids(tokenizer, sorted(self.blocklist)) if self.post.offensive_filter else None
        )

    # ---- input checks and preprocessing -----------------------------------------------------------------
    def check_images(self, images: Sequence[Any]) -> list[Image.Image]:
        """RGB copies of `images`, or a `CaptionInputError` naming the first bad one."""
        if isinstance(images, Image.Image) or not isinstance(images, Sequence) or isinstance(images, str):
            raise CaptionInputError("caption() takes a list of PIL images")
        out = []
        for i, im in enumerate(images):
            if not isinstance(im, Image.Image):
                hint = " (open files with caption_files)" if isinstance(im, str | os.PathLike | bytes) else ""
                raise CaptionInputError(f"images[{i}] is a {type(im).__name__}, not a PIL image{hint}")
            w, h = im.size
            if w * h > self.max_pixels:
                raise CaptionInputError(
                    f"images[{i}] is {w}x{h} = {w * h} pixels, more than the limit of {self.max_pixels}"
                )
            if w == 0 or h == 0:
                raise CaptionInputError(f"images[{i}] has no pixels ({w}x{h})")
            try:
                out.append(to_rgb(im))  # loads lazily opened files: a truncated one fails here
            except (OSError, SyntaxError, ValueError) as e:
                raise CaptionInputError(f"images[{i}]: broken or truncated image ({e})") from None
        return out

    def pixels(self, images: Sequence[Image.Image]) -> Tensor:
        """Checked images -> model input (B, 3, S, S), through the same resize + centre crop as evaluation."""
        full = self.image_size + self.pre.crop_margin
        u8 = torch.stack([pil_to_uint8(resize_crop(im, full)) for im in images])  # (B, 3, S', S')
        return self.normalize(u8)

    def normalize(self, u8: Tensor) -> Tensor:
        """Cached uint8 images (B, 3, S', S') -> centre-cropped, normalised float (B, 3, S, S)."""
        return normalize_images(center_crop(u8, self.image_size), self.pre.mean, self.pre.std)

    # ---- decoding ---------------------------------------------------------------------------------------
    def generation_config(self, beam: int, n_best: int) -> GenerationConfig:
        if not isinstance(beam, int) or beam < 1:
            raise CaptionInputError(f"beam must be an integer >= 1, got {beam!r}")
        if not isinstance(n_best, int) or not 1 <= n_best <= beam:
            raise CaptionInputError(f"n_best must be an integer in [1, beam={beam}], got {n_best!r}")
        return GenerationConfig(
            strategy="beam",
            num_beams=beam,
            num_return_sequences=n_best,
            length_penalty=self.dec.length_penalty,
            max_new_tokens=self.max_new_tokens,
            no_repeat_ngram_size=self.dec.no_repeat_ngram_size or None,
            bad_words_ids=self._bad_ids,
            eos_token_id=self.tok.eos_id,
            pad_token_id=self.tok.pad_id,
            decoder_start_token_id=self.tok.bos_id,
        )

    @torch.inference_mode()
    def token_probs(self, memory: Tensor, owner: list[int], hyps: list[list[int]]) -> list[Tensor]:
        """p(token_t | image, prefix) (T_i, V) for each hypothesis (teacher-forced, one batched pass)."""
        seqs = [[self.tok.bos_id, *h] for h in hyps]
        ids, mask = pad_batch(seqs, self.tok.pad_id)
        mem = memory.index_select(0, torch.tensor(owner, device=memory.device))
        logits = self.model.decode(ids.to(memory.device), mem, attention_mask=mask.to(memory.device))
        probs = logits.float().softmax(-1).cpu()  # (H, T, V)
        return [probs[i, : len(h)] for i, h in enumerate(hyps)]

    @torch.inference_mode()
    def run(
        self,
        pixels: Tensor,
        *,
        beam: int = 3,
        n_best: int = 3,
        fairness: bool | None = None,
        keep_probs: bool = False,
    ) -> list[list[dict[str, Any]]]:
        """Normalised images (B, 3, S, S) -> per image, n-best dicts with caption, score and details:
        `raw` (the words as generated, only cased), `plain` (all post-processing but the fairness rule),
        `changes` (fairness edits), `removed` (offensive words dropped). `keep_probs` adds `words`,
        `positions` and `probs` (T, V) so a caller can re-apply the fairness rule at other thresholds."""
        gcfg = self.generation_config(beam, n_best)
        fairness = self.post.fairness if fairness is None else fairness
        results: list[list[dict[str, Any]]] = []
        for start in range(0, pixels.shape[0], self.batch_size):
            px = pixels[start : start + self.batch_size].to(self.device)
            out = generate(self.model, config=gcfg, encoder_inputs=(px,))
            eos = self.tok.eos_id
            hyps = [[[t for t in h.tokens if t != eos] for h in nb] for nb in out.nbest]
            probs = None
            if fairness:
                memory = self.model.encode(px)  # (B, N, D)
                owner = [b for b, nb in enumerate(hyps) for _ in nb]
                flat = self.token_probs(memory, owner, [h for nb in hyps for h in nb])
                it = iter(flat)
                probs = [[next(it) for _ in nb] for nb in hyps]
            res_blocklist = self.blocklist if self.post.offensive_filter else None
            for b, nb in enumerate(out.nbest):
                items, seen = [], set()
                for j, h in enumerate(nb):
                    words_pos = token_words(self.tok, hyps[b][j])
                    words = [w for w, _ in words_pos]
                    res = postprocess(
                        words,
                        [p for _, p in words_pos] if fairness else None,
                        probs[b][j] if probs is not None else None,
                        lex=self.lexicon if fairness else None,
                        threshold=self.post.fairness_threshold,
                        blocklist=res_blocklist,
                    )
                    plain = postprocess(words, blocklist=res_blocklist).text if fairness else res.text
                    if res.text in seen:  # n-best entries that became identical after post-processing
                        continue
                    seen.add(res.text)
                    item = {
                        "caption": res.text,
                        "score": round(h.score, 4),
                        "raw": finish(" ".join(words)),
                        "plain": plain,
                        "changes": [dataclasses.asdict(c) for c in res.changes],
                        "removed": res.removed_offensive,
                    }
                    if keep_probs and probs is not None:
                        item.update(words=words, positions=[p for _, p in words_pos], probs=probs[b][j])
                    items.append(item)
                results.append(items)
        return results

    def caption(
        self, images: list[Image.Image], *, beam: int = 3, n_best: int = 3, details: bool = False
    ) -> list[list[dict[str, Any]]]:
        """Per image, up to `n_best` captions best first: [{"caption", "score"}] (score = length-penalised
        log-probability). `details=True` adds the raw caption and the post-processing edits."""
        self.generation_config(beam, n_best)  # argument errors before any work
        checked = self.check_images(images)
        if not checked:
            return []
        out = self.run(self.pixels(checked), beam=beam, n_best=n_best)
        if details:
            return out
        return [[{"caption": d["caption"], "score": d["score"]} for d in nb] for nb in out]

    def caption_files(
        self, paths: Sequence[str | os.PathLike], *, beam: int = 3, n_best: int = 3, details: bool = False
    ) -> list[list[dict[str, Any]]]:
        """`caption` for image files; unreadable, truncated or oversized files raise `DataError`."""
        images = [open_image(p, self.max_pixels) for p in paths]
        return self.caption(images, beam=beam, n_best=n_best, details=details)


def load_predictor(
    ckpt_dir: str | os.PathLike = "models/caption",
    *,
    device: str = "cpu",
    batch_size: int = 16,
    fairness: bool | None = None,
    fairness_threshold: float | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> CaptionPredictor:
    """A `CaptionPredictor` for a checkpoint directory (settings from its config.json, overridable here)."""
    model, config, tok = load_checkpoint(Path(ckpt_dir), map_location=device)
    if config.get("family") != "captioner" or not isinstance(model, Captioner):
        raise CheckpointError(f"{ckpt_dir} holds a {config.get('family')!r} model, not a captioner")
    if tok is None:
        raise CheckpointError(f"{ckpt_dir} has no tokenizer.json")
    pre, dec, post = app_settings(config)
    if fairness is not None:
        post.fairness = fairness
    if fairness_threshold is not None:
        post.fairness_threshold = fairness_threshold
    return CaptionPredictor(
        model, tok, pre, dec, post, device=device, batch_size=batch_size, max_pixels=max_pixels
    )


__all__ = ["CaptionInputError", "CaptionPredictor", "app_settings", "load_predictor"]
