"""`python -m gensys.apps.compose <prepare|train|eval|predict> ...`: the recipes without the `gensys` CLI."""

from __future__ import annotations

import sys

from gensys.apps.compose import recipe
from gensys.errors import GensysError

VERBS = {
    "prepare": recipe.prepare_main,
    "train": recipe.train_main,
    "memory": recipe.memory_main,
    "eval": recipe.eval_main,
    "predict": recipe.predict_main,
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in VERBS:
        print(f"usage: python -m gensys.apps.compose {{{','.join(VERBS)}}} [--config FILE] [key=value ...]")
        return 2
    try:
        return VERBS[argv[0]](argv[1:])
    except GensysError as e:
        print(f"gensys compose {argv[0]}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
