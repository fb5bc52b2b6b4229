"""`python -m gensys.apps.translate <verb> [args]`: the translate recipes without the `gensys` command."""

from __future__ import annotations

import sys

from gensys.apps.translate.recipe import eval_main, predict_main, prepare_main, train_main
from gensys.errors import GensysError

VERBS = {"prepare": prepare_main, "train": train_main, "eval": eval_main, "predict": predict_main}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in VERBS:
        print(f"usage: python -m gensys.apps.translate {{{','.join(VERBS)}}} [--help]", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        return VERBS[argv[0]](argv[1:])
    except GensysError as e:
        print(f"gensys translate {argv[0]}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
