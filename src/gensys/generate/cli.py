"""`gensys generate --ckpt DIR --prompt TEXT [knobs]`: decode from a checkpoint with any strategy.

    gensys generate --ckpt runs/chat --prompt "Hello" --strategy sample --temperature 0.8 --top-p 0.9 --seed 1
    gensys generate --ckpt runs/compose --prompt "Thanks for" --strategy beam --num-beams 4 \\
        --num-return-sequences 3 --json
    gensys generate --ckpt runs/chat --prompt "Tell me" --stream

Decoder-only checkpoints continue the prompt; encoder-decoder (seq2seq) checkpoints translate it (the source
gets EOS appended; the decoder starts from BOS). Prints one line of text per sequence, or with `--json` the
tokens and scores of every returned sequence. Knobs that do not apply to the chosen strategy are an error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

from gensys.errors import GensysError
from gensys.generate.core import DECODE_PATHS, GenerationConfig, generate
from gensys.generate.stream import stream


def _early_stopping(value: str) -> bool | str:
    v = value.lower()
    if v in ("true", "false"):
        return v == "true"
    if v == "never":
        return "never"
    raise argparse.ArgumentTypeError(f"expected true, false or never, got {value!r}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gensys generate",
        description="Decode text from a checkpoint with greedy search, sampling or beam search.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--ckpt", required=True, help="checkpoint directory (config.json, model.safetensors, ...)")
    p.add_argument("--prompt", action="append", required=True, help="prompt text; repeat for a batch")
    p.add_argument(
        "--strategy", choices=["greedy", "sample", "beam"], default="greedy", help="search strategy"
    )
    p.add_argument("--max-new-tokens", type=int, default=64, help="most tokens to generate")
    p.add_argument("--min-new-tokens", type=int, default=0, help="EOS is forbidden before this many")
    g = p.add_argument_group("beam search")
    g.add_argument("--num-beams", type=int, default=None, help="beams (default 4)")
    g.add_argument(
        "--length-penalty", type=float, default=None, help="score = logprob / len**lp (default 1.0)"
    )
    g.add_argument("--early-stopping", type=_early_stopping, default=None, help="true | false | never")
    p.add_argument("--num-return-sequences", type=int, default=1, help="n-best (beam) or samples per prompt")
    g = p.add_argument_group("sampling")
    g.add_argument("--temperature", type=float, default=None, help="divide logits by this")
    g.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens")
    g.add_argument("--top-p", type=float, default=None, help="keep the smallest set with probability >= p")
    g.add_argument("--min-p", type=float, default=None, help="keep tokens with p >= min_p * p_max")
    g.add_argument("--seed", type=int, default=None, help="seed of this request's random generator")
    g = p.add_argument_group("every strategy")
    g.add_argument("--repetition-penalty", type=float, default=None, help="> 1 discourages repeated tokens")
    g.add_argument(
        "--no-penalize-prompt", action="store_true", help="repetition penalty counts generated tokens only"
    )
    g.add_argument("--no-repeat-ngram-size", type=int, default=None, help="forbid repeating n-grams")
    g.add_argument("--bad-words", action="append", default=None, help="text that must not be generated")
    g.add_argument("--stop", action="append", default=None, help="stop string (cut from the output)")
    g.add_argument("--no-eos", action="store_true", help="ignore the tokenizer's EOS (always run to max)")
    p.add_argument(
        "--decode-path",
        choices=DECODE_PATHS,
        default="auto",
        help="model step: modules (forward + KVCache), static (fixed-shape step), compiled (it, compiled by "
        "Inductor), auto (static where the model offers it)",
    )
    p.add_argument("--add-bos", action="store_true", help="prepend BOS to decoder-only prompts")
    p.add_argument("--json", action="store_true", help="print tokens and scores as JSON")
    p.add_argument("--stream", action="store_true", help="print text as it is generated (one prompt)")
    p.add_argument("--device", default="cpu", help="torch device")
    return p


def _config(a: argparse.Namespace, tok: Any) -> GenerationConfig:
    eos = None if a.no_eos else tok.maybe_id("eos")
    bad = None if not a.bad_words else [tok.encode(w) for w in a.bad_words]
    return GenerationConfig(
        strategy=a.strategy,
        max_new_tokens=a.max_new_tokens,
        min_new_tokens=a.min_new_tokens,
        num_beams=a.num_beams,
        length_penalty=a.length_penalty,
        early_stopping=a.early_stopping,
        num_return_sequences=a.num_return_sequences,
        temperature=a.temperature,
        top_k=a.top_k,
        top_p=a.top_p,
        min_p=a.min_p,
        seed=a.seed,
        repetition_penalty=a.repetition_penalty,
        penalize_prompt=not a.no_penalize_prompt,
        no_repeat_ngram_size=a.no_repeat_ngram_size,
        bad_words_ids=bad,
        eos_token_id=eos,
        pad_token_id=tok.maybe_id("pad"),
        stop_strings=a.stop,
        decoder_start_token_id=tok.maybe_id("bos"),
        decode_path=a.decode_path,
    )


def _batch(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ids (B, T) and mask (B, T)."""
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), t, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, t - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, t - len(r) :] = 1
    return ids, mask


def generate_main(argv: list[str]) -> int:
    """Entry point of `gensys generate`; returns the exit code."""
    from gensys.checkpoint import load_checkpoint  # heavy imports only when the command runs

    a = _parser().parse_args(argv)
    model, config, tok = load_checkpoint(a.ckpt, map_location=a.device)
    if tok is None:
        raise GensysError(f"{a.ckpt} has no tokenizer.json; gensys generate needs one to encode the prompt")
    family = config.get("family")
    if family not in ("decoder_lm", "seq2seq"):
        raise GensysError(f"gensys generate decodes decoder_lm and seq2seq checkpoints, not {family!r}")
    cfg = _config(a, tok)
    if family == "decoder_lm":
        rows = [tok.encode(p, add_bos=a.add_bos) for p in a.prompt]
        if any(not r for r in rows):
            raise GensysError("empty prompt: give some text, or --add-bos to start from BOS")
        ids, mask = _batch(rows, cfg.pad_token_id or 0)
        kwargs: dict[str, Any] = dict(input_ids=ids.to(a.device), attention_mask=mask.to(a.device))
    else:
        src, src_mask = _batch([tok.encode(p, add_eos=True) for p in a.prompt], cfg.pad_token_id or 0)
        src, src_mask = src.to(a.device), src_mask.to(a.device)
        kwargs = dict(encoder_inputs=(src, src_mask), memory_mask=src_mask)

    if a.stream:
        if len(a.prompt) != 1 or a.num_return_sequences != 1:
            raise GensysError("--stream takes one prompt and one return sequence")
        out = None
        shown = ""
        for ev in stream(model, config=cfg, tokenizer=tok, **kwargs):
            if ev.done:
                out = ev.output
                if ev.text_deltas:
                    sys.stdout.write(ev.text_deltas[0])
            elif ev.text_deltas is not None:
                sys.stdout.write(ev.text_deltas[0])
            elif ev.texts is not None and ev.texts[0] != shown:
                shown = ev.texts[0]
                sys.stdout.write(f"\r\x1b[K{shown}" if sys.stdout.isatty() else f"{shown}\n")
            sys.stdout.flush()
        sys.stdout.write("\n")
        if not a.json:
            return 0
    else:
        out = generate(model, config=cfg, tokenizer=tok, **kwargs)

    if a.json:
        result = [
            {
                "prompt": prompt,
                "sequences": [
                    {"text": h.text, "tokens": h.tokens, "score": h.score, "logprob": h.logprob} for h in hyps
                ],
            }
            for prompt, hyps in zip(a.prompt, out.nbest)
        ]
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        for text in out.texts or []:
            print(text)
    return 0


__all__ = ["generate_main"]
