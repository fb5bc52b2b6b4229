"""`load_predictor("models/rag")` -> `RagPredictor`, what `gensys rag search|ask` and `gensys serve` call.

    p = load_predictor("models/rag")
    p.search("mint a token", user="ana", groups=["everyone"], k=5, filters={"tags": ["native-tokens"]})
    p.ask("How do I mint a native token?", user="ana", groups=["everyone"], mode="extractive", k=5)
    -> {"answer", "citations": [{"id", "title", "url", "site", "snippet", "score"}], "retrieved": [...],
        "mode", "latency_ms"}

Every query runs as a user with groups: only chunks readable by one of the groups are ever retrieved.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from gensys.apps.rag.answer import ExtractiveAnswerer, GenerativeAnswerer
from gensys.apps.rag.config import Config, RagError
from gensys.apps.rag.embed import Embedder, load_embedder
from gensys.apps.rag.index import RagIndex
from gensys.apps.rag.search import Searcher
from gensys.config import from_dict
from gensys.errors import GensysError

MAX_K = 50


class RagPredictor:
    """Search and ask over one index, as a user with groups."""

    def __init__(
        self, index: RagIndex, embedder: Embedder, cfg: Config, generative: GenerativeAnswerer | None = None
    ) -> None:
        self.cfg = cfg
        self.searcher = Searcher(index, embedder, cfg.search)
        self.extractive = ExtractiveAnswerer(
            lambda texts: embedder.encode(texts), cfg.answer.passages, cfg.answer.passage_chars
        )
        self.generative = generative
        self.generative_error = ""  # why the default chat model could not be used, if it could not
        if generative is not None and generative.fallback is None:
            generative.fallback = self.extractive

    @property
    def index(self) -> RagIndex:
        return self.searcher.index

    def _check_query(self, text: Any, what: str) -> str:
        if not isinstance(text, str):
            raise RagError(f"the {what} must be a string, got {type(text).__name__}")
        text = text.strip()
        if not text:
            raise RagError(f"the {what} is empty")
        limit = self.cfg.answer.max_question_chars
        if len(text) > limit:
            raise RagError(f"the {what} is {len(text)} characters long; the limit is {limit}")
        return text

    def _check_access(self, user: Any, groups: Any, k: Any) -> list[str]:
        if not isinstance(user, str) or not user:
            raise RagError("a user name is required")
        if isinstance(groups, str) or not all(isinstance(g, str) for g in groups):
            raise RagError("groups must be a list of group names")
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise RagError(f"k must be an integer in [1, {MAX_K}], got {k!r}")
        return sorted(set(groups) | set(self.cfg.acl.implicit_groups))

    def search(
        self,
        query: str,
        *,
        user: str,
        groups: list[str],
        k: int = 5,
        filters: dict[str, Any] | None = None,
        method: str | None = None,
    ) -> list[dict[str, Any]]:
        """Top-k chunks readable by `groups`: [{"id", "title", "url", "site", "snippet", "score", ...}]."""
        query = self._check_query(query, "query")
        groups = self._check_access(user, groups, k)
        hits = self.searcher.search(query, groups=groups, k=k, filters=filters, method=method)
        return [self.searcher.hit_dict(h) for h in hits]

    def ask(
        self,
        question: str,
        *,
        user: str,
        groups: list[str],
        mode: str | None = None,
        k: int = 5,
        filters: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Answer `question` from the top-k chunks the user may read, citing them as [n].

        With `answer.thread_answers` (default), a retrieved question brings its thread's best readable
        answer along; `retrieved` lists every chunk the answer could cite, in citation order.

        mode: "extractive" quotes passages; "generative" has the chat model write the answer (answered
        extractively, with a note, when no chat model is loaded); None = the config's `answer.mode`.
        """
        t0 = time.perf_counter()
        question = self._check_query(question, "question")
        mode = mode or self.cfg.answer.mode
        if mode not in ("auto", "extractive", "generative"):
            raise RagError(f"mode must be 'extractive' or 'generative', got {mode!r}")
        groups = self._check_access(user, groups, k)
        qvec = self.searcher.embedder.encode([question])[0]  # (D,)
        hits = self.searcher.search(question, groups=groups, k=k, filters=filters, query_vec=qvec)
        if self.cfg.answer.thread_answers:
            hits = self.searcher.with_answers(hits, qvec, groups, filters)
        retrieved = [self.searcher.hit_dict(h) for h in hits]
        out: dict[str, Any] = {}
        if mode in ("auto", "generative") and self.generative is not None:
            result = self.generative.answer(question, retrieved)
            out["mode"] = "extractive" if "fallback" in result else "generative"
        else:
            result = self.extractive.answer(question, retrieved)
            out["mode"] = "extractive"
            if mode == "generative":
                out["note"] = f"no chat model is loaded ({self.cfg.answer.chat_ckpt}); answered extractively"
        # Every citation must point at a retrieved chunk (the answerers check it too).
        cited = [n for n in result["cited"] if 1 <= n <= len(retrieved)]
        citations = [
            {key: retrieved[n - 1][key] for key in ("id", "title", "url", "site", "snippet", "score")}
            | {"n": n}
            for n in cited
        ]
        out.update(
            answer=result["answer"],
            citations=citations,
            retrieved=retrieved,
            latency_ms=round(1000 * (time.perf_counter() - t0), 1),
        )
        for key in ("fallback", "dropped_citations"):
            if key in result:
                out[key] = result[key]
        return out

    def ask_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`ask` for a list of {"question", "user", "groups", "mode"?, "k"?, "filters"?}."""
        return [
            self.ask(
                r["question"],
                user=r["user"],
                groups=r["groups"],
                mode=r.get("mode"),
                k=r.get("k", 5),
                filters=r.get("filters"),
            )  # fmt: skip
            for r in requests
        ]


def load_config_file(folder: Path) -> Config:
    """The Config saved next to an index (config.json), or the defaults."""
    path = folder / "config.json"
    if not path.is_file():
        return Config()
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RagError(f"{path} is not valid JSON ({e})") from None
    return from_dict(Config, data, source=str(path))


def load_predictor(
    ckpt_dir: str | Path = "models/rag",
    *,
    chat_ckpt: str | None = None,
    cfg: Config | None = None,
    **opts: Any,
) -> RagPredictor:
    """Open an index folder with the encoder it was built with, and the chat model if one exists.

    `chat_ckpt` (default: the config's `answer.chat_ckpt`, i.e. models/chat) is used for generative answers
    when it is a decoder-LM checkpoint; otherwise answers are extractive. Other `opts` override config keys
    given as "section.key" (e.g. `**{"search.fusion": "weighted"}`).
    """
    from gensys.config import apply_overrides, to_dict

    folder = Path(ckpt_dir)
    cfg = cfg or load_config_file(folder)
    if opts:
        cfg = from_dict(Config, apply_overrides(to_dict(cfg), [f"{k}={v}" for k, v in opts.items()]))
    if cfg.embed.threads:
        import torch

        torch.set_num_threads(cfg.embed.threads)
    index = RagIndex.load(folder, cfg.index)
    index.allowed([])  # build BM25 and the ACL tables now, not during the first request
    embedder = load_embedder(cfg.embed.path, cfg.embed.max_tokens, cfg.embed.batch_size)
    index.check_embedder(embedder)
    generative, why = None, ""
    chat = Path(chat_ckpt if chat_ckpt is not None else cfg.answer.chat_ckpt)
    if cfg.answer.mode != "extractive" and chat_ckpt != "" and (chat / "config.json").is_file():
        try:
            generative = GenerativeAnswerer.from_checkpoint(
                chat, context_chars=cfg.answer.context_chars, max_new_tokens=cfg.answer.max_new_tokens
            )
        except GensysError as e:
            if chat_ckpt is not None:  # asked for by name: its failure is the caller's error
                raise
            why = str(e)  # the default models/chat is not a usable LM: answer extractively
    pred = RagPredictor(index, embedder, cfg, generative)
    pred.generative_error = why
    return pred
