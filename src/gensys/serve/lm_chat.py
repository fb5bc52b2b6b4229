"""Chat and text completion over a plain decoder-LM checkpoint: the stand-in for the chat pipeline.

The real chat system (issue 11) is `ChatPipeline.complete(messages, *, user, session_id, params, stream)`
with safety filtering, sessions and refusals. Until a checkpoint ships with it, `/v1/chat/completions`
serves any `decoder_lm` checkpoint through this adapter: the messages go through a chat template, the
decoding through `gensys.generate` (batched: rows of one call are left-padded), and replies come back
in the pipeline's shape, so swapping the pipeline in changes nothing above this file. `/v1/completions`
always uses this adapter (raw text in, continuation out), on the chat pipeline's language model when
the pipeline exposes one.

Chat template: the chat system's own (`gensys.apps.chat.template.render_prompt`: role tokens a user cannot
type, oldest turns dropped first when the prompt is too long):

    <bos> <|system|> text <|end|> <|user|> text <|end|> ... <|assistant|>   -> reply ... <|end|>

A tokenizer without role tokens gets a plain-text template ("User: ...\\nAssistant:") that stops at the
next "\\nUser:".
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from gensys.errors import GensysError
from gensys.generate import GenerationConfig, generate, stream

ROLES = ("system", "user", "assistant")
_TEXT_ROLE = {"system": "System", "user": "User", "assistant": "Assistant"}


def gen_params_key(params: dict[str, Any]) -> tuple:
    """Requests whose decoding settings match can share one batched `generate` call (seed excluded:
    each row gets its own generator)."""
    return tuple(
        sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items() if k != "seed")
    )


class LMChat:
    """`complete` / `complete_batch` (chat messages) and `complete_text_batch` (raw prompts) over an LM."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, max_context: int | None = None) -> None:
        self.model = model.eval()
        self.tok = tokenizer
        cfg = getattr(model, "cfg", None) or getattr(model, "config", None)
        self.max_context = max_context or int(getattr(cfg, "max_seq_len", 0) or 2048)
        roles = getattr(tokenizer, "roles", {})
        self.chat_tokens = all(r in roles for r in ("user", "assistant", "end"))
        self.eos_ids = [i for i in (tokenizer.maybe_id("eos"), tokenizer.maybe_id("end")) if i is not None]
        self.pad_id = tokenizer.maybe_id("pad")
        if self.pad_id is None:
            self.pad_id = self.eos_ids[0] if self.eos_ids else 0

    @classmethod
    def load(cls, ckpt_dir: str | Path) -> LMChat:
        """Load a `decoder_lm` checkpoint with its tokenizer."""
        from gensys.checkpoint import load_checkpoint

        model, config, tok = load_checkpoint(ckpt_dir)
        if config.get("family") != "decoder_lm":
            raise GensysError(f"{ckpt_dir}: chat needs a decoder_lm checkpoint, not {config.get('family')!r}")
        if tok is None:
            raise GensysError(f"{ckpt_dir}: has no tokenizer.json")
        return cls(model, tok)

    # ---- prompts ------------------------------------------------------------------------------------------
    def render(self, messages: Sequence[dict[str, str]], max_tokens: int | None = None) -> list[int]:
        """Token ids of a conversation, ending where the assistant's reply starts (at most `max_tokens`:
        the oldest turns go first)."""
        tok = self.tok
        if self.chat_tokens and tok.maybe_id("bos") is not None:
            try:  # the chat system's own template, so serving prompts exactly as training did
                from gensys.apps.chat.template import render_prompt
            except ImportError:
                render_prompt = None
            if render_prompt is not None:
                try:
                    return render_prompt(tok, messages, max_tokens)
                except ValueError as e:  # e.g. no user turn
                    raise GensysError(str(e)) from None
        ids: list[int] = [tok.bos_id] if tok.maybe_id("bos") is not None else []
        if self.chat_tokens:
            end = tok.special_id("end")
            for m in messages:
                role = m["role"] if m["role"] in tok.roles else "user"
                ids += [tok.special_id(role), *tok.encode(m["content"]), end]
            ids.append(tok.special_id("assistant"))
        else:
            text = "".join(f"{_TEXT_ROLE.get(m['role'], 'User')}: {m['content']}\n" for m in messages)
            ids += tok.encode(text + "Assistant:")
        return ids if max_tokens is None else ids[-max_tokens:]

    def _text_prompt(self, prompt: str) -> list[int]:
        ids = self.tok.encode(prompt)
        return ([self.tok.bos_id] if self.tok.maybe_id("bos") is not None else []) + ids

    # ---- decoding -----------------------------------------------------------------------------------------
    def _gen_config(self, params: dict[str, Any], stops: list[str]) -> GenerationConfig:
        temperature = float(params.get("temperature", 1.0) if params.get("temperature") is not None else 1.0)
        common = dict(
            max_new_tokens=int(params.get("max_tokens") or 64),
            repetition_penalty=params.get("repetition_penalty"),
            eos_token_id=self.eos_ids or None,
            pad_token_id=self.pad_id,
            stop_strings=stops or None,
        )
        if temperature == 0.0:  # OpenAI semantics: temperature 0 = the most likely tokens
            return GenerationConfig(strategy="greedy", **common)
        top_p = params.get("top_p")
        top_k = params.get("top_k")
        return GenerationConfig(
            strategy="sample",
            temperature=temperature,
            top_p=top_p if top_p is not None and top_p < 1.0 else None,
            top_k=top_k if top_k else None,
            **common,
        )

    def _decode(
        self, rows: list[list[int]], params: dict[str, Any], seeds: list[int | None], stops: list[str],
        streaming: bool,
    ) -> Iterator[tuple[int, str]]:  # fmt: skip
        """Yields (row, text delta) while decoding (only when `streaming`); returns the replies."""
        t = max(len(r) for r in rows)
        cfg = self._gen_config(params, stops)
        cfg.max_new_tokens = max(1, min(cfg.max_new_tokens, self.max_context - t))
        ids = torch.full((len(rows), t), self.pad_id, dtype=torch.long)  # (B, T) left-padded
        mask = torch.zeros(len(rows), t, dtype=torch.long)  # (B, T)
        for i, r in enumerate(rows):
            ids[i, t - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, t - len(r) :] = 1
        gens = None
        if cfg.strategy == "sample":
            gens = [torch.Generator().manual_seed(random.getrandbits(62) if s is None else s) for s in seeds]
        if streaming:
            out = None
            for ev in stream(self.model, ids, mask, cfg, tokenizer=self.tok, generator=gens):
                for i, d in enumerate(ev.text_deltas or ()):
                    if d:
                        yield i, d
                if ev.done:
                    out = ev.output
            assert out is not None
        else:
            out = generate(self.model, ids, mask, cfg, tokenizer=self.tok, generator=gens)
        replies = []
        for i, hyps in enumerate(out.nbest):
            h = hyps[0]
            text = h.text or ""
            ended = bool(h.tokens) and h.tokens[-1] in self.eos_ids
            cut = bool(stops) and text != self.tok.decode([x for x in h.tokens if x not in self.eos_ids])
            finish = "stop" if ended or cut or len(h.tokens) < cfg.max_new_tokens else "length"
            usage = {"prompt_tokens": len(rows[i]), "completion_tokens": len(h.tokens)}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            replies.append({"text": text, "finish_reason": finish, "usage": usage})
        return replies

    def _prepare(self, requests: Sequence[dict[str, Any]]) -> tuple:
        params = requests[0].get("params") or {}
        chat = "messages" in requests[0]
        # the prompt and the reply must fit the model's window; the prompt keeps at least half of it
        max_new = int(params.get("max_tokens") or 64)
        keep = max(self.max_context - max_new, self.max_context // 2, 1)
        rows = [
            self.render(r["messages"], keep) if chat else self._text_prompt(r["prompt"])[-keep:]
            for r in requests
        ]
        seeds = [(r.get("params") or {}).get("seed") for r in requests]
        return rows, params, seeds, self._stops(params, chat)

    def _stops(self, params: dict[str, Any], chat: bool) -> list[str]:
        stop = params.get("stop") or []
        stops = [stop] if isinstance(stop, str) else list(stop)
        if chat and not self.chat_tokens:
            stops.append("\nUser:")
        return stops

    # ---- the chat pipeline's interface --------------------------------------------------------------------
    def complete_batch(self, requests: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Replies to many requests `{"messages" | "prompt", "params", "session_id", "emit"}` sharing one
        set of decoding settings (seed aside). `emit(delta)` receives streamed text of that row."""
        if not requests:
            return []
        rows, params, seeds, stops = self._prepare(requests)
        emits = [r.get("emit") for r in requests]
        steps = self._decode(rows, params, seeds, stops, streaming=any(e is not None for e in emits))
        while True:
            try:
                i, delta = next(steps)
            except StopIteration as done:
                replies = done.value
                break
            if emits[i] is not None:
                emits[i](delta)
        for r, rep in zip(requests, replies):
            rep["session_id"] = r.get("session_id") or uuid.uuid4().hex
        return replies

    def complete(
        self,
        messages: Sequence[dict[str, str]],
        *,
        user: str | None = None,
        session_id: str | None = None,
        params: dict[str, Any] | None = None,
        stream: bool = False,
    ) -> dict[str, Any] | Iterator[str | dict[str, Any]]:
        """The chat pipeline's call: a reply dict, or (stream=True) text deltas ending with the reply."""
        req = {"messages": list(messages), "params": params or {}, "session_id": session_id}
        if not stream:
            return self.complete_batch([req])[0]

        def deltas() -> Iterator[str | dict[str, Any]]:
            rows, params, seeds, stops = self._prepare([req])
            steps = self._decode(rows, params, seeds, stops, streaming=True)
            while True:
                try:
                    yield next(steps)[1]
                except StopIteration as done:
                    replies = done.value
                    break
            yield {**replies[0], "session_id": session_id or uuid.uuid4().hex}

        return deltas()

    def complete_text_batch(self, requests: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Continuations of raw prompts: requests `{"prompt", "params", "emit"}`."""
        return self.complete_batch(requests)


__all__ = ["LMChat", "gen_params_key"]
