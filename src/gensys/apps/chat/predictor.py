"""The chat system's predictor: `load_predictor(ckpt_dir, **opts) -> ChatPipeline`, and `gensys chat predict`.

    pipe = load_predictor("models/chat", **{"sessions.db_path": ":memory:"})  # + config="x.yaml"
    reply = pipe.complete([{"role": "user", "content": "Hi!"}], user="alice")
    for part in pipe.complete(msgs, user="alice", session_id=reply["session_id"], stream=True): ...

`ckpt_dir` holds `policy/` (decoder_lm), `reward/` (reward model, optional) and `safety/` (the safety
classifier), as `gensys chat train` and `gensys chat train --config configs/chat/safety.yaml stage=safety`
write them to models/chat.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gensys.apps.chat.pipeline import ChatParams, ChatPipeline, load_pipeline_config
from gensys.config import ConfigError

DEFAULT_DIR = "models/chat"
DEFAULT_CONFIG = "configs/chat/pipeline.yaml"


def load_predictor(ckpt_dir: str | Path = DEFAULT_DIR, **opts: Any) -> ChatPipeline:
    """The chat pipeline over the checkpoints in `ckpt_dir`.

    Options: `config` (a pipeline YAML such as configs/chat/pipeline.yaml; none = the built-in defaults,
    which are that file's values), `overrides` (a list of `key.sub=value`), and any other `key.sub` option
    as a value (e.g. `{"sessions.db_path": "x.sqlite3"}`, what a serve config's `predictor_options.chat`
    mapping gives).
    """
    config = opts.pop("config", None)
    overrides = [str(o) for o in opts.pop("overrides", None) or []]
    for key, value in opts.items():
        overrides.append(f"{key}={json.dumps(value)}")  # JSON is YAML: a string stays a string
    cfg = load_pipeline_config(config, overrides)
    return ChatPipeline.from_dir(ckpt_dir, cfg)


def predict_main(argv: list[str]) -> int:
    """Chat through the full pipeline (sessions, safety filter, best-of-n, refusals): each stdin line is one
    user message of one conversation; one JSON reply per line on stdout."""
    p = argparse.ArgumentParser(
        prog="gensys chat predict",
        description=predict_main.__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--ckpt", default=DEFAULT_DIR, help="directory with policy/, reward/ and safety/")
    p.add_argument("--config", default=None, help=f"pipeline YAML, e.g. {DEFAULT_CONFIG} (default: built-in)")
    p.add_argument("--user", default="cli", help="user id the session belongs to")
    p.add_argument("--session", default=None, help="continue this session id")
    p.add_argument("--new-session-per-line", action="store_true", help="each line starts a new conversation")
    p.add_argument("--stream", action="store_true", help="print text deltas to stderr as they come")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--n", type=int, default=None, help="best-of-n candidates ranked by the reward model")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "overrides", nargs="*", help="pipeline key.sub=value overrides, e.g. sessions.db_path=:memory:"
    )
    args = p.parse_args(argv)
    if args.config is not None and not Path(args.config).is_file():
        raise ConfigError(f"config file not found: {args.config}")
    pipe = load_predictor(args.ckpt, config=args.config, overrides=args.overrides)
    params = ChatParams(temperature=args.temperature, max_tokens=args.max_tokens, n=args.n, seed=args.seed)
    session = args.session
    for line in sys.stdin:
        text = line.rstrip("\n")
        if not text.strip():
            continue
        msgs = [{"role": "user", "content": text}]
        if args.stream:
            reply: dict[str, Any] = {}
            for part in pipe.complete(msgs, user=args.user, session_id=session, params=params, stream=True):
                if isinstance(part, str):
                    print(part, end="", file=sys.stderr, flush=True)
                else:
                    reply = part
            print(file=sys.stderr)
        else:
            reply = pipe.complete(msgs, user=args.user, session_id=session, params=params)  # type: ignore[assignment]
        print(json.dumps({"prompt": text, **reply}, ensure_ascii=False), flush=True)
        session = None if args.new_session_per_line else reply["session_id"]
    return 0


__all__ = ["load_predictor", "predict_main"]
