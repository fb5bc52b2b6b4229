"""The chat template: role tokens around each turn, the reply ends with <|end|>.

    <bos> [<|system|> text <|end|>] <|user|> text <|end|> [<|assistant|> text <|end|> <|user|> ...]
          <|assistant|> reply <|end|>

The same layout as the server's renderer (`gensys.serve.lm_chat.LMChat.render`), so a checkpoint trained here
is prompted at serving time exactly as in training. Role ids are inserted with `tok.special_id(...)`; message
text goes through `tok.encode` with `allow_special=False`, so a user typing "<|assistant|>" cannot forge a
turn.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gensys.data.batching import IGNORE_INDEX
from gensys.data.tokenizer import Tokenizer

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}
ROLES = ("system", "user", "assistant")


def _turn(tok: Tokenizer, message: Message) -> list[int]:
    role = message["role"]
    if role not in ROLES:
        raise ValueError(f"unknown chat role {role!r}; expected one of {ROLES}")
    return [tok.special_id(role), *tok.encode(message["content"]), tok.special_id("end")]


def render_prompt(tok: Tokenizer, messages: Sequence[Message], max_tokens: int | None = None) -> list[int]:
    """Token ids of a conversation up to the start of the assistant's reply (`... <|assistant|>`).

    With `max_tokens`, the oldest turns are dropped first (a system turn is kept); if the newest turn alone is
    still too long, its text is cut from the left, so what the user said last survives.
    """
    head = [tok.bos_id]
    system = [_turn(tok, m) for m in messages if m["role"] == "system"][:1]
    turns = [_turn(tok, m) for m in messages if m["role"] != "system"]
    tail = [tok.special_id("assistant")]
    if not turns:
        raise ValueError("a prompt needs at least one user turn")
    fixed = len(head) + len(tail) + sum(len(s) for s in system)
    if max_tokens is not None:
        while len(turns) > 1 and fixed + sum(len(t) for t in turns) > max_tokens:
            turns.pop(0)
        room = max_tokens - fixed - sum(len(t) for t in turns[1:])
        if len(turns[0]) > room:
            first = turns[0]
            keep = max(room - 2, 1)  # role token and <|end|> stay
            turns[0] = [first[0], *first[1:-1][-keep:], first[-1]]
    ids = head + [i for s in system for i in s] + [i for t in turns for i in t] + tail
    return ids


def response_ids(tok: Tokenizer, text: str, max_tokens: int | None = None) -> list[int]:
    """Ids of an assistant reply followed by <|end|> (the text is cut so the whole fits `max_tokens`)."""
    ids = tok.encode(text)
    if max_tokens is not None:
        ids = ids[: max(max_tokens - 1, 0)]
    return [*ids, tok.special_id("end")]


def supervised_example(
    tok: Tokenizer,
    messages: Sequence[Message],
    response: str,
    max_len: int,
    max_prompt_len: int | None = None,
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of prompt + reply, next-token labels only on the reply and its <|end|>.

    `labels[t]` is the token position t should predict (IGNORE_INDEX over the prompt), already shifted, as
    `gensys.train.losses.lm_loss` expects. The prompt gets at most `max_prompt_len` (default max_len // 2)
    tokens and the reply the rest.
    """
    prompt = render_prompt(tok, messages, max_prompt_len or max_len // 2)
    reply = response_ids(tok, response, max_len - len(prompt))
    ids = prompt + reply
    # position t predicts ids[t+1]; the last prompt token (<|assistant|>) predicts the reply's first token
    labels = [IGNORE_INDEX] * (len(prompt) - 1) + reply + [IGNORE_INDEX]
    return ids, labels


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_hh_dialogue(text: str) -> list[Message]:
    """Anthropic HH "\\n\\nHuman: ...\\n\\nAssistant: ..." text -> chat messages (a trailing empty
    "Assistant:" -- the slot for the reply -- is dropped)."""
    parts = _HH_TURN.split(text)
    messages: list[Message] = []
    # parts = [preamble, role, content, role, content, ...]
    for role, content in zip(parts[1::2], parts[2::2]):
        content = content.strip()
        if not content:
            continue
        messages.append({"role": "user" if role == "Human" else "assistant", "content": content})
    if not messages and text.strip():
        messages.append({"role": "user", "content": text.strip()})
    return messages


def sft_messages(instruction: str, context: str = "", system: str = "") -> list[Message]:
    """Messages of an instruction-tuning example: optional system turn, user = instruction + context."""
    user = instruction.strip() if not context.strip() else f"{instruction.strip()}\n\n{context.strip()}"
    msgs: list[Message] = [{"role": "system", "content": system}] if system else []
    return [*msgs, {"role": "user", "content": user}]


__all__ = [
    "Message",
    "parse_hh_dialogue",
    "render_prompt",
    "response_ids",
    "sft_messages",
    "supervised_example",
]
