"""Byte-level BPE tokenizers (Hugging Face `tokenizers`), saved as `tokenizer.json`.

Byte-level means every string maps to tokens and back exactly: text is split into UTF-8 bytes before BPE, so
emoji, CJK, combining marks, newlines and leading spaces all round-trip and there is never an unknown token.

Special tokens (ids 0..9 of a tokenizer trained here) play *roles*: `pad`, `bos`, `eos`, `unk`, `mask`,
`sep`, and the chat roles `system`, `user`, `assistant`, `end`. `encode` does **not** turn special-token text
typed by a user into special ids unless asked (`allow_special=True`): a chat user typing "<|assistant|>" gets
ordinary tokens, so they cannot forge a turn. Templates should append role ids (`tok.special_id("user")`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from gensys.data.atomic import atomic_write_text
from gensys.errors import TokenizerError

# Role -> token text. The order fixes the ids (0..9) of tokenizers trained by `train_bpe`.
ROLE_TOKENS: dict[str, str] = {
    "pad": "<pad>",
    "bos": "<bos>",
    "eos": "<eos>",
    "unk": "<unk>",
    "mask": "<mask>",
    "sep": "<sep>",
    "system": "<|system|>",
    "user": "<|user|>",
    "assistant": "<|assistant|>",
    "end": "<|end|>",
}
DEFAULT_SPECIALS: list[str] = list(ROLE_TOKENS.values())

# Role names used by common foreign tokenizer.json files, tried in order by `Tokenizer.from_hf_file`.
_FOREIGN_ROLE_GUESSES: dict[str, tuple[str, ...]] = {
    "pad": ("<pad>", "[PAD]", "<|pad|>"),
    "bos": ("<bos>", "<s>", "[CLS]", "<|begin_of_text|>", "<|endoftext|>"),
    "eos": ("<eos>", "</s>", "[SEP]", "<|end_of_text|>", "<|endoftext|>"),
    "unk": ("<unk>", "[UNK]"),
    "mask": ("<mask>", "[MASK]"),
    "sep": ("<sep>", "[SEP]", "</s>"),
}

TOKENIZER_FILE = "tokenizer.json"


class Tokenizer:
    """A thin wrapper over `tokenizers.Tokenizer` that knows which token plays which role."""

    def __init__(self, hf: HFTokenizer, roles: dict[str, str] | None = None) -> None:
        self.hf = hf
        # A second copy that treats special-token text as plain text; kept separate (rather than toggling a
        # flag per call) so concurrent encodes in a server never see the other mode.
        self._plain = HFTokenizer.from_str(hf.to_str())
        self._plain.encode_special_tokens = True
        if roles is None:
            roles = {r: t for r, t in ROLE_TOKENS.items() if hf.token_to_id(t) is not None}
        for role, token in roles.items():
            if hf.token_to_id(token) is None:
                raise TokenizerError(f"tokenizer has no token {token!r} for role {role!r}")
        self.roles: dict[str, str] = dict(roles)
        self._special_ids = frozenset(
            i for i, tok in hf.get_added_tokens_decoder().items() if tok.special
        ) | frozenset(self.special_id(r) for r in self.roles)

    # ---- ids of roles -------------------------------------------------------------------------------------
    def special_id(self, role: str) -> int:
        """Id of the token playing `role` ("bos", "eos", "pad", "user", ...); a clear error if none."""
        token = self.roles.get(role)
        if token is None:
            raise TokenizerError(f"tokenizer has no {role!r} token (roles: {sorted(self.roles)})")
        tid = self.hf.token_to_id(token)
        assert tid is not None  # checked in __init__
        return tid

    def maybe_id(self, role: str) -> int | None:
        """Id of the token playing `role`, or None."""
        return self.special_id(role) if role in self.roles else None

    @property
    def pad_id(self) -> int:
        return self.special_id("pad")

    @property
    def bos_id(self) -> int:
        return self.special_id("bos")

    @property
    def eos_id(self) -> int:
        return self.special_id("eos")

    @property
    def mask_id(self) -> int | None:
        return self.maybe_id("mask")

    @property
    def unk_id(self) -> int | None:
        return self.maybe_id("unk")

    @property
    def sep_id(self) -> int | None:
        return self.maybe_id("sep")

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of all special tokens (skipped by `decode(skip_special=True)`)."""
        return self._special_ids

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (the embedding table size)."""
        return self.hf.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def id_to_token(self, tid: int) -> str | None:
        return self.hf.id_to_token(tid)

    # ---- encode / decode ----------------------------------------------------------------------------------
    def encode(
        self, text: str, add_bos: bool = False, add_eos: bool = False, allow_special: bool = False
    ) -> list[int]:
        """Token ids of `text`. Special-token text becomes special ids only with `allow_special=True`."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        hf = self.hf if allow_special else self._plain
        ids = hf.encode(text, add_special_tokens=False).ids
        return self._wrap(ids, add_bos, add_eos)

    def encode_batch(
        self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = False, allow_special: bool = False
    ) -> list[list[int]]:
        """`encode` for many texts at once (parallel inside `tokenizers`)."""
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"encode_batch expects str items, got {type(t).__name__}")
        hf = self.hf if allow_special else self._plain
        encs = hf.encode_batch(list(texts), add_special_tokens=False)
        return [self._wrap(e.ids, add_bos, add_eos) for e in encs]

    def _wrap(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        if add_bos:
            ids = [self.bos_id, *ids]
        if add_eos:
            ids = [*ids, self.eos_id]
        return ids

    def decode(self, ids: Sequence[int] | Any, skip_special: bool = True) -> str:
        """Text of `ids` (a list or a 1-D tensor); special tokens are dropped unless `skip_special=False`."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.hf.decode(list(ids), skip_special_tokens=skip_special)

    def decode_batch(self, batch: Sequence[Sequence[int]] | Any, skip_special: bool = True) -> list[str]:
        """`decode` for many id lists (or a 2-D tensor; strip padding first if it is not a special token)."""
        if hasattr(batch, "tolist"):
            batch = batch.tolist()
        return self.hf.decode_batch([list(b) for b in batch], skip_special_tokens=skip_special)

    # ---- persistence --------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Settings recorded in a checkpoint's config.json so the tokenizer reloads with the same roles."""
        return {"vocab_size": self.vocab_size, "roles": dict(self.roles)}

    def save(self, path: str | os.PathLike) -> Path:
        """Write `tokenizer.json` atomically into directory `path` (or to `path` if it ends in .json)."""
        path = Path(path)
        if path.suffix != ".json":
            path = path / TOKENIZER_FILE
        return atomic_write_text(path, self.hf.to_str(pretty=True))

    @classmethod
    def load(cls, path: str | os.PathLike, roles: dict[str, str] | None = None) -> Tokenizer:
        """Load a tokenizer saved by `save` (a directory holding tokenizer.json, or the file itself)."""
        return cls(_read_hf(path), roles)

    @classmethod
    def from_hf_file(cls, path: str | os.PathLike, roles: dict[str, str] | None = None) -> Tokenizer:
        """Load a foreign `tokenizer.json` (e.g. GPT-2's); roles not given are guessed from common names."""
        hf = _read_hf(path)
        guessed: dict[str, str] = {}
        for role, candidates in _FOREIGN_ROLE_GUESSES.items():
            for tok in candidates:
                if hf.token_to_id(tok) is not None:
                    guessed[role] = tok
                    break
        for role, tok in ROLE_TOKENS.items():  # our chat roles, if the file happens to have them
            if role not in guessed and hf.token_to_id(tok) is not None:
                guessed[role] = tok
        guessed.update(roles or {})
        return cls(hf, guessed)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, roles={sorted(self.roles)})"


def _read_hf(path: str | os.PathLike) -> HFTokenizer:
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise TokenizerError(f"tokenizer file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        json.loads(text)  # a JSON error names line/column; the Rust parser's message is less clear
        return HFTokenizer.from_str(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path} is not a valid tokenizer.json ({e})") from None
    except Exception as e:  # tokenizers raises a plain Exception on schema errors
        raise TokenizerError(f"{path} is not a valid tokenizer.json ({str(e).splitlines()[0]})") from None


def new_bytelevel_bpe() -> HFTokenizer:
    """An untrained byte-level BPE pipeline: no normaliser (it would break exact round trips)."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    return hf


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] = DEFAULT_SPECIALS,
    min_frequency: int = 2,
    roles: dict[str, str] | None = None,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer on `texts`; special tokens get ids 0..len(special_tokens)-1.

    `vocab_size` counts the 256 byte tokens and the special tokens. `roles` defaults to the standard roles
    whose tokens are among `special_tokens`.
    """
    minimum = 256 + len(special_tokens)
    if vocab_size < minimum:
        raise TokenizerError(
            f"vocab_size {vocab_size} is too small: 256 bytes + {len(special_tokens)} specials"
        )
    if len(set(special_tokens)) != len(special_tokens):
        raise TokenizerError(f"duplicate special tokens: {list(special_tokens)}")
    seen = 0

    def counted() -> Iterator[str]:
        nonlocal seen
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"train_bpe expects str texts, got {type(t).__name__}")
            if t:
                seen += 1
                yield t

    hf = new_bytelevel_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(counted(), trainer=trainer)
    if seen == 0:
        raise TokenizerError("train_bpe got no non-empty text")
    if roles is None:
        roles = {r: t for r, t in ROLE_TOKENS.items() if t in special_tokens}
    return Tokenizer(hf, roles)
