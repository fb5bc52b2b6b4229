"""The chat assistant's inference pipeline (seed notes 4.4), one small replaceable stage per step:

    validate -> sessions (reconcile + store) -> prompt enhancer -> input safety filter
             -> response generator (n candidates, ranked by the reward model)
             -> response safety evaluator (unsafe best -> next safe one) -> rejection generator if needed

`ChatPipeline.complete(messages, *, user, session_id=None, params=None, stream=False)` returns the reply

    {"text", "finish_reason": "stop" | "length" | "content_filter",
     "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}, "session_id", "refused": bool,
     "categories": {category: score}, "flagged": [category, ...], "refusal_stage": None | "input" | "output"}

`categories` are the safety scores that decided: the prompt's, or for an output refusal the highest score of
any candidate per category.

Streaming protocol (`stream=True`): an iterator that yields zero or more non-empty `str` text deltas and then
exactly one `dict`, the reply above; `"".join(deltas) == reply["text"]` always. Everything that can be
refused with a 4xx (bad messages, bad params, someone else's session) raises *before* the iterator is
returned, so a server can still answer with an error status. With `n == 1` the deltas are the model's tokens
as they are decoded; the text is released in slices of `generator.stream_check_every` tokens, each checked by
the safety classifier first, and if a slice is unsafe decoding stops and the last delta is the refusal
(finish_reason "content_filter"). With `n > 1` all candidates are needed for ranking, so the chosen reply
arrives as one delta. The session is saved when the final dict is produced (a stream abandoned halfway
saves nothing).

`ChatPipeline.complete_batch(items)` answers many requests `{"messages", "user", "session_id", "params",
"emit"}` with each model called once per batch (one batched, left-padded generation per decoding setting);
`emit` receives a streamed request's deltas as above. `complete` is the batch of one, so a greedy reply, and
a seeded sample (each candidate row has its own random stream), does not depend on its batch.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from gensys.apps.chat.enhancer import EnhancerConfig, PromptEnhancer, SpellFixer
from gensys.apps.chat.rejection import rejection_text
from gensys.apps.chat.safety import SafetyClassifier, SafetyVerdict
from gensys.apps.chat.sessions import (
    SessionConfig,
    SessionNotFound,
    SessionStore,
    SQLiteSessionStore,
    reconcile,
    window_history,
)
from gensys.apps.chat.template import ROLES, render_prompt
from gensys.config import load_config
from gensys.data.batching import pad_batch
from gensys.data.tokenizer import Tokenizer
from gensys.errors import CheckpointError, GensysError
from gensys.generate import GenerationConfig, GenerationOutput, generate, stream

Message = dict[str, Any]
Reply = dict[str, Any]


class ChatInputError(GensysError):
    """A request the pipeline refuses to process (bad messages or parameters): HTTP 400."""

    http_status = 400


# ---------------------------------------------------------------------------------------------------------
# config


@dataclass
class SafetyFilterConfig:
    """The input filter and the response safety evaluator (one classifier, two places)."""

    enabled: bool = True  # false serves without any safety layer (say so loudly: for experiments only)
    checkpoint: str = "safety"  # relative to the pipeline's checkpoint dir, or a path
    # Per-category overrides of the thresholds stored in the checkpoint (tuned there for F1 on held-out data).
    # harmful_request's F1-tuned 0.45 refuses casual openers ("Hello, how are you?" scores 0.67: the red-team
    # openers it was trained on start that way); 0.8 is the serving operating point, its XSTest trade-off is
    # in docs/chat_pipeline.md.
    thresholds: dict[str, float] = field(default_factory=lambda: {"harmful_request": 0.8})
    block: list[str] = field(default_factory=list)  # blocking categories; [] = the checkpoint's list
    check_output: bool = True


@dataclass
class GeneratorConfig:
    """Default decoding settings (a request's params override them) and best-of-n ranking."""

    n: int = 4  # candidates per reply, ranked by the reward model
    max_n: int = 8
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 50
    repetition_penalty: float = 1.1
    max_tokens: int = 128
    min_prompt_tokens: int = 64  # max_tokens is cut so the prompt keeps at least this much of the context
    stream_check_every: int = 16  # tokens per safety-checked slice when streaming
    rank_by: Literal["reward", "logprob"] = "reward"  # logprob: mean token log-prob (no reward model)


@dataclass
class PipelineConfig:
    """The whole inference pipeline (`configs/chat/pipeline.yaml`)."""

    policy: str = "policy"  # decoder_lm checkpoint, relative to the checkpoint dir (or a path)
    reward: str = "reward"  # reward-model checkpoint; "" = rank by log-prob
    max_messages: int = 200
    max_message_chars: int = 32_000  # a longer message is refused (HTTP 400), never silently cut
    sessions: SessionConfig = field(default_factory=SessionConfig)
    enhancer: EnhancerConfig = field(default_factory=EnhancerConfig)
    safety: SafetyFilterConfig = field(default_factory=SafetyFilterConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)


def load_pipeline_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Defaults, then the YAML file, then `key.sub=value` overrides (unknown keys are errors)."""
    return load_config(PipelineConfig, path, list(overrides))


@dataclass
class ChatParams:
    """Decoding parameters of one request (None = the pipeline's default)."""

    temperature: float | None = None  # 0 = greedy (then n is 1)
    top_p: float | None = None
    top_k: int | None = None  # 0 = off
    repetition_penalty: float | None = None  # 1 = off
    max_tokens: int | None = None
    n: int | None = None  # best-of-n candidates (not OpenAI's n: that many separate replies)
    stop: list[str] | None = None
    seed: int | None = None

    @classmethod
    def coerce(cls, params: ChatParams | Mapping[str, Any] | None) -> ChatParams:
        """A ChatParams from itself, a dict (as the server passes) or None; bad values are ChatInputError."""
        if params is None:
            return cls()
        if isinstance(params, ChatParams):
            p = params
        elif isinstance(params, Mapping):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(params) - known)
            if unknown:
                raise ChatInputError(f"unknown parameter(s) {unknown}; known: {sorted(known)}")
            stop = params.get("stop")
            p = cls(**{**params, "stop": [stop] if isinstance(stop, str) else stop})
        else:
            raise ChatInputError(f"params must be a mapping or ChatParams, not {type(params).__name__}")
        p.check()
        return p

    def check(self) -> None:
        def bad(name: str, why: str) -> ChatInputError:
            return ChatInputError(f"{name}={getattr(self, name)!r}: {why}")

        def num(name: str) -> float | None:
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                raise bad(name, "must be a number")
            return v

        if (t := num("temperature")) is not None and not 0 <= t <= 2:
            raise bad("temperature", "must be in [0, 2]")
        if (v := num("top_p")) is not None and not 0 < v <= 1:
            raise bad("top_p", "must be in (0, 1]")
        if (v := num("top_k")) is not None and (v < 0 or int(v) != v):
            raise bad("top_k", "must be a non-negative integer")
        if (v := num("repetition_penalty")) is not None and not 0 < v <= 10:
            raise bad("repetition_penalty", "must be in (0, 10]")
        if (v := num("max_tokens")) is not None and (v < 1 or int(v) != v):
            raise bad("max_tokens", "must be a positive integer")
        if (v := num("n")) is not None and (v < 1 or int(v) != v):
            raise bad("n", "must be a positive integer")
        if (v := num("seed")) is not None and int(v) != v:
            raise bad("seed", "must be an integer")
        if self.stop is not None:
            if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
                raise bad("stop", "must be a non-empty string or a list of them")
            if len(self.stop) > 4:
                raise bad("stop", "at most 4 stop strings")


# ---------------------------------------------------------------------------------------------------------
# validation


def validate_messages(messages: Any, max_messages: int, max_chars: int) -> list[Message]:
    """Plain `{"role", "content"}` dicts, or ChatInputError saying exactly what is wrong."""
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes):
        raise ChatInputError("messages must be a list of {'role', 'content'} objects")
    if not messages:
        raise ChatInputError("messages is empty: send at least one user message")
    if len(messages) > max_messages:
        raise ChatInputError(f"{len(messages)} messages; at most {max_messages} per request")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ChatInputError(f"messages[{i}] must be an object with 'role' and 'content'")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ChatInputError(f"messages[{i}].role {role!r} is not one of {list(ROLES)}")
        if not isinstance(content, str):
            raise ChatInputError(f"messages[{i}].content must be a string, got {type(content).__name__}")
        if len(content) > max_chars:
            raise ChatInputError(
                f"messages[{i}].content has {len(content):,} characters; the limit is {max_chars:,}"
            )
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise ChatInputError(f"the last message must be from the user, not {out[-1]['role']!r}")
    if not out[-1]["content"].strip():
        raise ChatInputError("the last user message is empty")
    return out


# ---------------------------------------------------------------------------------------------------------
# the pipeline


@dataclass
class _Turn:
    """State of one request between the eager part of `complete` and the (possibly streamed) rest."""

    user: str
    session_id: str
    stored: list[Message]
    conversation: list[Message]
    replace: bool
    params: ChatParams
    prompt: list[int] = field(default_factory=list)


@dataclass
class _Slices:
    """A streamed row's text: `released` went out, `pending` waits for the next safety check."""

    released: str = ""
    pending: str = ""
    refusal: SafetyVerdict | None = None

    def text(self) -> str:
        return self.released + self.pending


class ChatPipeline:
    """Sessions, prompt enhancement, input and output safety, best-of-n generation and refusals over a
    policy LM, an optional reward model and a safety classifier. See the module docstring for `complete`."""

    def __init__(
        self,
        policy: torch.nn.Module,
        tokenizer: Tokenizer,
        *,
        reward: torch.nn.Module | None = None,
        safety: SafetyClassifier | None = None,
        store: SessionStore | None = None,
        cfg: PipelineConfig | None = None,
        spell: SpellFixer | None = None,
    ) -> None:
        self.cfg = cfg or PipelineConfig()
        self.policy = policy.eval()
        self.tok = tokenizer
        self.reward = reward.eval() if reward is not None else None
        self.safety = safety if self.cfg.safety.enabled else None
        if self.cfg.safety.enabled and safety is None:
            raise CheckpointError("the safety filter is enabled but no safety classifier was given")
        self.store = store or SQLiteSessionStore.from_config(self.cfg.sessions)
        self.enhancer = PromptEnhancer(self.cfg.enhancer, spell)
        self.max_context = int(policy.cfg.max_seq_len)
        self.stop_ids = [tokenizer.special_id("end"), tokenizer.eos_id]

    # ---- loading -------------------------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, ckpt_dir: str | Path, cfg: PipelineConfig | None = None) -> ChatPipeline:
        """Load policy/, reward/ and safety/ from `ckpt_dir` (e.g. models/chat) as `cfg` names them."""
        from gensys.apps.chat.common import load_lm, load_reward_model

        cfg = cfg or PipelineConfig()
        root = Path(ckpt_dir)

        def where(p: str) -> Path:
            q = Path(p)
            return q if q.is_absolute() or not (root / q).exists() and q.exists() else root / q

        policy_dir = where(cfg.policy)
        if not (policy_dir / "config.json").is_file() and (root / "config.json").is_file():
            policy_dir = root  # a bare decoder_lm checkpoint
        if not (policy_dir / "config.json").is_file():
            raise CheckpointError(
                f"no chat policy at {policy_dir}: run `gensys chat train --config configs/chat/demo.yaml`"
            )
        policy, tok = load_lm(policy_dir)
        reward = None
        if cfg.reward and cfg.generator.rank_by == "reward":
            rdir = where(cfg.reward)
            if (rdir / "config.json").is_file():
                reward, rtok = load_reward_model(rdir)
                if rtok.hf.to_str() != tok.hf.to_str():
                    raise CheckpointError(f"{rdir}: the reward model's tokenizer differs from the policy's")
        safety = None
        if cfg.safety.enabled:
            safety = SafetyClassifier.load(
                where(cfg.safety.checkpoint),
                thresholds=cfg.safety.thresholds or None,
                block=cfg.safety.block or None,
            )
        spell = _load_spell(cfg.enhancer) if cfg.enhancer.spelling else None
        return cls(policy, tok, reward=reward, safety=safety, cfg=cfg, spell=spell)

    # ---- sessions (for the server's session list / delete endpoints) ---------------------------------------
    @staticmethod
    def _user(user: str | None) -> str:
        # Requests without a user share the anonymous namespace: their sessions are protected only by the
        # unguessable id. A server should pass an authenticated user id.
        return user or ""

    def list_sessions(self, user: str | None) -> list[dict[str, Any]]:
        """The user's sessions, most recently used first: `[{"id", "title", "created", "updated",
        "n_messages"}]`."""
        return self.store.list(self._user(user))

    def get_session(self, user: str | None, session_id: str) -> dict[str, Any]:
        """One session with its messages (SessionNotFound, HTTP 404, if it is not this user's)."""
        s = self.store.get(self._user(user), session_id)
        return {**s.summary(), "messages": s.messages}

    def delete_session(self, user: str | None, session_id: str) -> None:
        """Delete a session on the user's request (SessionNotFound if it is not theirs)."""
        self.store.delete(self._user(user), session_id)

    # ---- the call ------------------------------------------------------------------------------------------
    def complete(
        self,
        messages: Sequence[Message],
        *,
        user: str | None = None,
        session_id: str | None = None,
        params: ChatParams | Mapping[str, Any] | None = None,
        stream: bool = False,
    ) -> Reply | Iterator[str | Reply]:
        """Answer the conversation `messages` (the last one from the user); see the module docstring."""
        turn = self._begin(messages, user, session_id, params)
        steps = self._serve([turn], [stream])
        if stream:
            return _deltas_then_reply(steps)
        reply = _drive(steps, lambda i, delta: None)[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    def complete_batch(self, items: Sequence[Mapping[str, Any]]) -> list[Reply | Exception]:
        """`complete` for many requests `{"messages", "user", "session_id", "params", "emit"}` in shared model
        calls: one input-safety call, one batched generation per decoding setting (left-padded; the seed is
        per request), one reward-model call and one output-safety call. `emit` (None or a callable) streams
        that request: it receives the text deltas `complete(stream=True)` would yield, as its row decodes.
        A request that fails (bad messages or params, someone else's session) gets its Exception in its
        place; the others go on. Greedy replies equal those of `complete` one request at a time."""
        results: list[Reply | Exception | None] = [None] * len(items)
        for wave in _waves(items):
            for i, reply in zip(wave, self._complete_wave([items[i] for i in wave])):
                results[i] = reply
        return results  # type: ignore[return-value]

    def _complete_wave(self, items: Sequence[Mapping[str, Any]]) -> list[Reply | Exception]:
        """`complete_batch` for items of distinct sessions."""
        turns: list[_Turn | Exception] = []
        for it in items:
            try:
                turns.append(
                    self._begin(it.get("messages"), it.get("user"), it.get("session_id"), it.get("params"))
                )
            except Exception as e:  # noqa: BLE001 - that request's own error
                turns.append(e)
        emits = [it.get("emit") for it in items]
        broken: dict[int, Exception] = {}

        def emit(j: int, delta: str) -> None:
            if j in broken:
                return
            try:
                emits[j](delta)  # type: ignore[misc]
            except Exception as e:  # noqa: BLE001 - a failing consumer fails its own request only
                broken[j] = e

        replies = _drive(self._serve(turns, [e is not None for e in emits]), emit)
        return [broken.get(j, reply) for j, reply in enumerate(replies)]

    def _begin(
        self,
        messages: Sequence[Message],
        user: str | None,
        session_id: str | None,
        params: ChatParams | Mapping[str, Any] | None,
    ) -> _Turn:
        """Everything that can fail with a 4xx: validation, params, the session lookup."""
        msgs = validate_messages(messages, self.cfg.max_messages, self.cfg.max_message_chars)
        p = ChatParams.coerce(params)
        if p.n is not None and p.n > self.cfg.generator.max_n:
            raise ChatInputError(f"n={p.n} is above this server's cap of {self.cfg.generator.max_n}")
        uid = self._user(user)
        if session_id is None:
            sid, stored = self.store.create(uid).id, []
        else:
            try:
                s = self.store.get(uid, session_id)
                sid, stored = s.id, s.messages
            except SessionNotFound:
                sid, stored = self.store.create(uid, session_id).id, []  # a new client-chosen id
        conversation, replace = reconcile(stored, msgs)
        # carry the stored "refused" marks onto a resent history (clients do not send them back)
        refused = {(m["role"], m["content"]) for m in stored if m.get("refused")}
        conversation = [
            {**m, "refused": True} if (m["role"], m["content"]) in refused else m for m in conversation
        ]
        return _Turn(uid, sid, stored, conversation, replace, p)

    def _serve(
        self, turns: Sequence[_Turn | Exception], streaming: Sequence[bool]
    ) -> Generator[tuple[int, str], None, list[Reply | Exception]]:
        """Everything after `_begin` for a batch of turns (an Exception stands for a request that already
        failed): yields `(turn index, text delta)` for the turns in `streaming`, returns one reply or
        Exception per turn. Each model runs once per batch, not once per turn."""
        out: list[Reply | Exception | None] = [t if isinstance(t, Exception) else None for t in turns]

        def finish(i: int, *args: Any, **kwargs: Any) -> None:
            try:
                out[i] = self._finish(turns[i], *args, **kwargs)  # type: ignore[arg-type]
            except Exception as e:  # noqa: BLE001 - e.g. the session store: this request fails alone
                out[i] = e

        enhanced: dict[int, list[Message]] = {}
        for i, t in enumerate(turns):
            if isinstance(t, _Turn):
                try:
                    enhanced[i] = self.enhancer.enhance(t.conversation).messages
                except Exception as e:  # noqa: BLE001 - this request's own failure
                    out[i] = e
        # 1) input safety filter: one classifier call over every turn's texts
        in_verdict = dict(zip(enhanced, self._check_inputs(list(enhanced.values()))))
        todo: dict[int, dict[str, Any]] = {}  # turn -> its decoding settings
        for i, verdict in in_verdict.items():
            turn = turns[i]
            assert isinstance(turn, _Turn)
            if verdict.unsafe:
                text = rejection_text(verdict.flagged, "input")
                if streaming[i]:
                    yield i, text
                finish(i, text, "content_filter", [], verdict, "input", refused_user=True)
                continue
            # 2) the prompt: refused exchanges left out, history windowed to the context, role tokens by id
            try:
                todo[i] = self.decoding(turn.params)
                turn.prompt = self.build_prompt(enhanced[i], todo[i]["max_tokens"])
            except Exception as e:  # noqa: BLE001 - e.g. a conversation the template cannot render
                todo.pop(i, None)
                out[i] = e
        # 3) generate: one batched call per decoding setting (a server batch has one: its key)
        groups: dict[tuple, list[int]] = {}
        for i, p in todo.items():
            groups.setdefault(_settings_key(p), []).append(i)
        cands: dict[int, list[dict[str, Any]]] = {}
        for idx in groups.values():
            p = todo[idx[0]]
            got = yield from self._generate(
                [turns[i].prompt for i in idx],  # type: ignore[union-attr]
                p,
                [todo[i]["seed"] for i in idx],
                [streaming[i] and p["n"] == 1 for i in idx],
                idx,
            )
            cands.update(zip(idx, got))
        # streamed replies were safety-checked slice by slice while they decoded
        ranked = []
        for i, cs in cands.items():
            c = cs[0]
            if not c.get("streamed"):
                ranked.append(i)
            elif "refusal" in c:
                finish(i, c["text"], "content_filter", [], c["refusal"], "output")
            else:
                finish(i, c["text"], c["finish"], c["tokens"], in_verdict[i], None)
        # 4) rank by reward (one call), then the first safe candidate of each (one classifier call)
        orders = self.rank_many([(turns[i].prompt, cands[i]) for i in ranked])  # type: ignore[union-attr]
        flat = self._check_candidates([c["text"] for i in ranked for c in cands[i]])
        at = 0
        for i, order in zip(ranked, orders):
            verdicts = flat[at : at + len(cands[i])]
            at += len(cands[i])
            best = _first_safe(order, verdicts)
            if best is not None:
                c = cands[i][best]
                if streaming[i] and c["text"]:
                    yield i, c["text"]
                finish(i, c["text"], c["finish"], c["tokens"], in_verdict[i], None)
                continue
            worst = _merge_verdicts(verdicts)
            text = rejection_text(worst.flagged, "output")
            if streaming[i]:
                yield i, text
            finish(i, text, "content_filter", [], worst, "output")
        return out  # type: ignore[return-value]

    # ---- the stages ----------------------------------------------------------------------------------------
    def check_input(self, messages: Sequence[Message]) -> SafetyVerdict:
        """Input safety filter: the newest user message and any system message a client sent (the operator's
        own prompt is trusted and skipped). The verdict merges them: highest score per category."""
        return self._check_inputs([messages])[0]

    def _check_inputs(self, conversations: Sequence[Sequence[Message]]) -> list[SafetyVerdict]:
        """`check_input` for several conversations with one classifier call."""
        if self.safety is None:
            return [SafetyVerdict({}, []) for _ in conversations]
        texts = [self._input_texts(m) for m in conversations]
        flat = [t for ts in texts for t in ts]
        verdicts = self.safety.check(flat) if flat else []
        out, at = [], 0
        for ts in texts:
            out.append(_merge_verdicts(verdicts[at : at + len(ts)]))
            at += len(ts)
        return out

    def _input_texts(self, messages: Sequence[Message]) -> list[str]:
        texts = [messages[-1]["content"]]
        for m in messages:
            if m["role"] == "system":
                own = self.cfg.enhancer.system_prompt
                client = m["content"][len(own) :] if own and m["content"].startswith(own) else m["content"]
                if client.strip():
                    texts.append(client.strip())
        return texts

    def build_prompt(self, messages: Sequence[Message], max_tokens: int) -> list[int]:
        """Prompt ids: refused exchanges removed, the history windowed to leave `max_tokens` for the reply,
        then the chat template (role tokens inserted by id, message text encoded as plain text)."""
        budget = self.max_context - max_tokens
        context = _without_refused(messages)
        context, _ = window_history(
            context, lambda m: len(self.tok.encode(m["content"])) + 2, budget - 2,
            mode=self.cfg.sessions.history, summary_chars=self.cfg.sessions.summary_chars,
        )  # fmt: skip
        return render_prompt(self.tok, context, budget)

    def select(
        self, candidates: Sequence[dict[str, Any]], order: Sequence[int]
    ) -> tuple[int | None, list[SafetyVerdict]]:
        """Response safety evaluator: the first candidate in `order` that the classifier passes (None if
        none does), with every candidate's verdict."""
        verdicts = self._check_candidates([c["text"] for c in candidates])
        return _first_safe(order, verdicts), verdicts

    # ---- generation ----------------------------------------------------------------------------------------
    def decoding(self, params: ChatParams) -> dict[str, Any]:
        """The request's decoding settings with the config's defaults filled in; `max_tokens` is cut so the
        prompt keeps `min_prompt_tokens` of the context, and temperature 0 (greedy) means one candidate."""
        g = self.cfg.generator

        def pick(v: Any, default: Any) -> Any:
            return default if v is None else v

        max_tokens = int(pick(params.max_tokens, g.max_tokens))
        max_tokens = max(1, min(max_tokens, self.max_context - g.min_prompt_tokens))
        temperature = float(pick(params.temperature, g.temperature))
        n = int(pick(params.n, g.n)) if temperature > 0 else 1  # greedy candidates would all be equal
        return {
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": float(pick(params.top_p, g.top_p)),
            "top_k": int(pick(params.top_k, g.top_k)),
            "repetition_penalty": float(pick(params.repetition_penalty, g.repetition_penalty)),
            "n": n,
            "stop": params.stop or None,
            "seed": params.seed,
        }

    def _gen_config(self, p: dict[str, Any], n: int) -> GenerationConfig:
        common = dict(
            max_new_tokens=p["max_tokens"],
            repetition_penalty=p["repetition_penalty"] if p["repetition_penalty"] != 1.0 else None,
            eos_token_id=self.stop_ids,
            pad_token_id=self.tok.pad_id,
            stop_strings=p["stop"],
        )
        if p["temperature"] == 0:
            return GenerationConfig(strategy="greedy", **common)
        return GenerationConfig(
            strategy="sample",
            temperature=p["temperature"],
            top_p=p["top_p"] if p["top_p"] < 1.0 else None,
            top_k=p["top_k"] or None,
            num_return_sequences=n,
            **common,
        )

    def _generators(self, seed: int | None, n: int) -> list[torch.Generator]:
        """One random stream per candidate row, derived from the request's seed (a fresh one if None), so a
        request's samples depend on its seed alone, never on the requests batched with it."""
        base = torch.Generator().manual_seed(int(seed) if seed is not None else random.getrandbits(62))
        seeds = torch.randint(0, 2**62, (n,), generator=base).tolist()
        return [torch.Generator().manual_seed(s) for s in seeds]

    def _finish_reason(self, tokens: list[int], text: str, max_tokens: int) -> str:
        if tokens and tokens[-1] in self.stop_ids:
            return "stop"
        if len(tokens) < max_tokens:  # ended early without EOS: a stop string
            return "stop"
        body = self.tok.decode(tokens)
        return "stop" if text != body else "length"

    def candidates(self, prompt: list[int], p: dict[str, Any]) -> list[dict[str, Any]]:
        """n sampled replies: `{"text", "tokens" (without the end token), "finish", "logprob"}`."""
        return _drive(self._generate([prompt], p, [p["seed"]], [False], [0]), lambda i, d: None)[0]

    def _generate(
        self,
        prompts: list[list[int]],
        p: dict[str, Any],
        seeds: list[int | None],
        streamed: list[bool],
        labels: Sequence[int],
    ) -> Generator[tuple[int, str], None, list[list[dict[str, Any]]]]:
        """`p["n"]` candidates per prompt (see `candidates`) from one left-padded batched decoding. Rows in
        `streamed` (n = 1) yield `(labels[row], delta)` in safety-checked slices as they decode (see the
        module docstring); their one candidate has `"streamed": True`, the released text, and `"refusal"`
        (the verdict) if a slice was unsafe."""
        ids, mask = pad_batch(prompts, self.tok.pad_id, side="left")  # (B, T), mask 1 = real token
        n = p["n"]
        cfg = self._gen_config(p, n)
        gens = None
        if cfg.strategy == "sample":  # rows are prompt-major: prompt b's candidates are rows b*n .. b*n+n-1
            gens = [g for s in seeds for g in self._generators(s, n)]
        slices = {b: _Slices() for b, s in enumerate(streamed) if s}
        if slices:
            out = yield from self._stream_slices(ids, mask, cfg, gens, slices, labels)
        else:
            out = generate(self.policy, ids, mask, cfg, tokenizer=self.tok, generator=gens)
        result = []
        for b in range(len(prompts)):
            s = slices.get(b)
            if s is not None and s.refusal is not None:
                refused = {"text": s.released, "tokens": [], "finish": "content_filter", "logprob": 0.0}
                result.append([{**refused, "streamed": True, "refusal": s.refusal}])
                continue
            assert out is not None
            cands = []
            for h in out.nbest[b]:
                finish = self._finish_reason(h.tokens, h.text or "", p["max_tokens"])
                body = [t for t in h.tokens if t not in self.stop_ids]
                cands.append(
                    {"text": (h.text or "").strip(), "tokens": body, "finish": finish,
                     "logprob": h.logprob / max(len(h.tokens), 1)}
                )  # fmt: skip
            if s is not None:  # the streamed text is only left-stripped: its deltas already went out
                cands[0].update(text=s.released, streamed=True)
            result.append(cands)
        return result

    def _stream_slices(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        cfg: GenerationConfig,
        gens: list[torch.Generator] | None,
        slices: dict[int, _Slices],
        labels: Sequence[int],
    ) -> Generator[tuple[int, str], None, GenerationOutput | None]:
        """Decode `ids` (B, T) streaming, releasing the rows in `slices` every `stream_check_every` tokens
        (and when the row ends) after one classifier call over all rows due; an unsafe slice ends that
        row's text with the refusal. None if every row was refused (decoding then stops early)."""
        check = self.safety is not None and self.cfg.safety.check_output
        every = max(1, self.cfg.generator.stream_check_every)
        steps = 0
        for ev in stream(self.policy, ids, mask, cfg, tokenizer=self.tok, generator=gens):
            steps += 0 if ev.done else 1
            due = []
            for b, s in slices.items():
                if s.refusal is not None:
                    continue
                s.pending += ev.text_deltas[b] if ev.text_deltas else ""
                if not s.released:
                    s.pending = s.pending.lstrip()  # as the non-streamed reply, which is stripped
                ended = ev.finished[b] and ev.token_ids is not None and ev.token_ids[b] is not None
                if ev.done or ended or steps % every == 0:
                    due.append(b)
            checked = [b for b in due if check and slices[b].pending.strip()]
            verdicts = dict(zip(checked, self._check_candidates([slices[b].text().strip() for b in checked])))
            for b in due:
                s = slices[b]
                v = verdicts.get(b)
                if v is not None and v.unsafe:
                    tail = ("\n\n" if s.released.strip() else "") + rejection_text(v.flagged, "output")
                    yield labels[b], tail
                    s.released, s.pending, s.refusal = s.released + tail, "", v
                    continue
                if s.pending:
                    yield labels[b], s.pending
                s.released, s.pending = s.text(), ""
            if ev.done:
                return ev.output
            if len(slices) == ids.shape[0] and all(s.refusal is not None for s in slices.values()):
                return None
        raise AssertionError("the stream ended without its output")  # pragma: no cover

    @torch.no_grad()
    def rank(self, prompt: list[int], candidates: list[dict[str, Any]]) -> list[int]:
        """Candidate indices, best first: by reward-model score, else by mean token log-prob."""
        return self.rank_many([(prompt, candidates)])[0]

    @torch.no_grad()
    def rank_many(self, items: Sequence[tuple[list[int], list[dict[str, Any]]]]) -> list[list[int]]:
        """`rank` for several (prompt, candidates) pairs, with one reward-model call over all candidates."""
        scored = [k for k, (_, cands) in enumerate(items) if len(cands) > 1]
        if self.reward is not None and scored:
            limit = int(self.reward.cfg.lm.max_seq_len)
            rows = []
            for k in scored:
                prompt, cands = items[k]
                for c in cands:
                    reply = [*c["tokens"], self.tok.special_id("end")][: limit // 2]
                    rows.append([*prompt[-(limit - len(reply)) :], *reply])
            ids, mask = pad_batch(rows, self.tok.pad_id, side="right")  # (sum n, T)
            scores = iter(self.reward(ids, attention_mask=mask).float().tolist())  # (sum n,)
            for k in scored:
                for c in items[k][1]:
                    c["reward"] = next(scores)
        key = "reward" if self.reward is not None else "logprob"
        return [_best_first(cands, key) if len(cands) > 1 else [0] for _, cands in items]

    def _check_candidates(self, texts: list[str]) -> list[SafetyVerdict]:
        if self.safety is None or not self.cfg.safety.check_output:
            return [SafetyVerdict({}, []) for _ in texts]
        return self.safety.check(texts) if texts else []

    # ---- the reply -----------------------------------------------------------------------------------------
    def _finish(
        self,
        turn: _Turn,
        text: str,
        finish: str,
        tokens: list[int],
        verdict: SafetyVerdict,
        stage: str | None,
        refused_user: bool = False,
    ) -> Reply:
        refused = finish == "content_filter"
        reply_msg: Message = {"role": "assistant", "content": text, **({"refused": True} if refused else {})}
        conv = list(turn.conversation)
        if refused_user:
            conv[-1] = {**conv[-1], "refused": True}
        if turn.replace:
            self.store.replace(turn.user, turn.session_id, [*conv, reply_msg])
        else:
            self.store.append(turn.user, turn.session_id, [*conv[len(turn.stored) :], reply_msg])
        prompt_tokens = len(turn.prompt) if turn.prompt else len(self.tok.encode(conv[-1]["content"]))
        completion = len(tokens) if tokens or not text else len(self.tok.encode(text))
        return {
            "text": text,
            "finish_reason": finish,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion,
            },
            "session_id": turn.session_id,
            "refused": refused,
            "categories": {c: round(s, 4) for c, s in verdict.scores.items()},
            "flagged": list(verdict.flagged),
            "refusal_stage": stage,
        }


def _drive(steps: Generator[tuple[int, str], None, list[Any]], emit: Callable[[int, str], None]) -> list[Any]:
    """Run a `_serve`-style generator to its end, handing each `(index, delta)` to `emit`; its result."""
    while True:
        try:
            i, delta = next(steps)
        except StopIteration as done:
            return done.value
        emit(i, delta)


def _deltas_then_reply(steps: Generator[tuple[int, str], None, list[Any]]) -> Iterator[str | Reply]:
    """The streaming protocol of `complete` over a one-turn `_serve`: the deltas, then the reply."""
    while True:
        try:
            _, delta = next(steps)
        except StopIteration as done:
            reply = done.value[0]
            break
        yield delta
    if isinstance(reply, Exception):
        raise reply
    yield reply


def _waves(items: Sequence[Mapping[str, Any]]) -> list[list[int]]:
    """Item indices in rounds where no two items continue the same session, so that a later turn of a
    session sees the earlier one stored, as when the requests run one after the other."""
    waves: list[list[int]] = []
    seen: list[set[tuple[str, str]]] = []
    for i, it in enumerate(items):
        sid = it.get("session_id")
        key = None if sid is None else (str(it.get("user") or ""), str(sid))
        w = 0
        while key is not None and w < len(seen) and key in seen[w]:
            w += 1
        if w == len(waves):
            waves.append([])
            seen.append(set())
        waves[w].append(i)
        if key is not None:
            seen[w].add(key)
    return waves


def _settings_key(p: Mapping[str, Any]) -> tuple:
    """Decoding settings that must match to share one `generate` call (the seed is per row)."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in p.items() if k != "seed"))


def _first_safe(order: Sequence[int], verdicts: Sequence[SafetyVerdict]) -> int | None:
    return next((i for i in order if not verdicts[i].unsafe), None)


def _best_first(candidates: Sequence[Mapping[str, Any]], key: str) -> list[int]:
    return sorted(range(len(candidates)), key=lambda i: -candidates[i][key])


def _merge_verdicts(verdicts: Sequence[SafetyVerdict]) -> SafetyVerdict:
    """One verdict over several texts: the highest score per category, the union of flagged categories."""
    if not verdicts:
        return SafetyVerdict({}, [])
    scores = {c: max(v.scores[c] for v in verdicts) for c in verdicts[0].scores}
    flagged = sorted({c for v in verdicts for c in v.flagged}, key=lambda c: -scores[c])
    return SafetyVerdict(scores, flagged)


def _without_refused(messages: Sequence[Message]) -> list[Message]:
    """Leave refused exchanges out of the model's context (no multi-turn build-up of a refused request):
    a refused user message, and a refusal together with the request it answered."""
    out: list[Message] = []
    skipped_user = False
    for m in messages:
        if m.get("refused"):
            if m["role"] == "assistant" and not skipped_user and out and out[-1]["role"] == "user":
                out.pop()  # the request whose replies were all unsafe goes with its refusal
            skipped_user = m["role"] == "user"
            continue
        skipped_user = False
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _load_spell(cfg: EnhancerConfig) -> SpellFixer:
    from gensys.data.readers import data_dir, iter_jsonl, iter_lines

    texts: list[str] = []
    for rel in cfg.spelling_vocab:
        path = Path(rel) if Path(rel).is_file() else data_dir() / rel
        if not path.is_file():
            raise CheckpointError(f"enhancer.spelling_vocab: {rel} not found (as a path or under data/)")
        if ".jsonl" in path.name:
            texts += [" ".join(str(v) for v in r.values() if isinstance(v, str)) for r in iter_jsonl(path)]
        else:
            texts += list(iter_lines(path))
    return SpellFixer.from_texts(texts)


__all__ = [
    "ChatInputError",
    "ChatParams",
    "ChatPipeline",
    "GeneratorConfig",
    "PipelineConfig",
    "SafetyFilterConfig",
    "load_pipeline_config",
    "validate_messages",
]
