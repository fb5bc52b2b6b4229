"""The `gensys` command line: one explicit command table, nothing registered behind your back.

    gensys <system> <verb> [--config FILE] [key.sub=value ...]    systems: compose translate chat caption rag
    gensys serve | demo | generate | metrics | report | convert ...

Each entry names the function that runs it as "module:function"; modules are imported only when their
command runs, so `gensys --help` stays fast (importing torch takes a second). Every function takes `argv`
(the arguments after the command) and returns an exit code. User errors (`GensysError`) print one line
and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

from gensys.errors import GensysError


@dataclass(frozen=True)
class Command:
    target: str | None  # "module:function" taking argv -> exit code; None = not built yet
    help: str
    issue: str = ""  # where the unbuilt work is tracked

    def load(self) -> Callable[[list[str]], int]:
        assert self.target is not None
        module, func = self.target.split(":")
        return getattr(importlib.import_module(module), func)


# Top-level commands.
COMMANDS: dict[str, Command] = {
    "serve": Command(
        "gensys.serve.main:serve_main",
        "serve all five systems over HTTP (OpenAI-compatible chat API + web pages)",
    ),
    "demo": Command("gensys.demo:demo_main", "the main job: what `make demo` runs"),
    "generate": Command(
        "gensys.generate.cli:generate_main", "decode text from a checkpoint with any strategy"
    ),
    "metrics": Command("gensys.metrics.cli:metrics_main", "score hypotheses against references (JSON out)"),
    "report": Command("gensys.metrics.cli:report_main", "online metrics from the server's event log"),
    "convert": Command(
        "gensys.models.convert:convert_main", "convert decoder LMs from/to Hugging Face format"
    ),
}

# Per-system verbs. Each system's recipe lives in gensys.apps.<system>.
SYSTEMS: dict[str, dict[str, Command]] = {
    "compose": {
        "prepare": Command(
            "gensys.apps.compose.recipe:prepare_main", "clean and split the AESLC emails, train the tokenizer"
        ),
        "train": Command(
            "gensys.apps.compose.recipe:train_main", "train the phrase-generator LM (and the n-gram baseline)"
        ),
        "memory": Command(
            "gensys.apps.compose.recipe:memory_main", "add the ∞-gram memory of the train emails"
        ),
        "eval": Command(
            "gensys.apps.compose.recipe:eval_main", "perplexity, ExactMatch@N, trigger rate, latency"
        ),
        "predict": Command(
            "gensys.apps.compose.recipe:predict_main", "suggest completions for text on stdin"
        ),
    },
    "translate": {
        "prepare": Command(
            "gensys.apps.translate.recipe:prepare_main", "build the joint BPE vocabulary for a language pair"
        ),
        "train": Command(
            "gensys.apps.translate.recipe:train_main", "MLM pretraining then supervised fine-tuning"
        ),
        "eval": Command(
            "gensys.apps.translate.recipe:eval_main", "BLEU, chrF, ROUGE-L, METEOR and decode speed"
        ),
        "predict": Command(
            "gensys.apps.translate.recipe:predict_main", "translate lines from stdin or --input"
        ),
    },
    "chat": {
        "prepare": Command(
            "gensys.apps.chat.recipe:prepare_main",
            "tokenizer and datasets for pretrain/SFT/preference/safety",
        ),
        "train": Command("gensys.apps.chat.recipe:train_main", "stage=pretrain|sft|reward|ppo|dpo|safety"),
        "eval": Command(
            "gensys.apps.chat.recipe:eval_main",
            "perplexity, reward-model accuracy, win rates, safety figures",
        ),
        "predict": Command(
            "gensys.apps.chat.recipe:predict_main", "answer a prompt through the inference pipeline"
        ),
    },
    "caption": {
        "prepare": Command(
            "gensys.apps.caption.recipe:prepare_main", "index images and captions, train the tokenizer"
        ),
        "train": Command("gensys.apps.caption.recipe:train_main", "train the CNN or ViT captioner"),
        "eval": Command("gensys.apps.caption.recipe:eval_main", "CIDEr-D, BLEU-1..4, METEOR, ROUGE-L on dev"),
        "predict": Command("gensys.apps.caption.recipe:predict_main", "caption images"),
    },
    "rag": {
        "prepare": Command(
            "gensys.apps.rag.recipe:prepare_main", "ingest the Stack Exchange corpus into chunks"
        ),
        "index": Command(
            "gensys.apps.rag.recipe:index_main", "build or update the hybrid (dense + BM25) index"
        ),
        "search": Command("gensys.apps.rag.recipe:search_main", "retrieve chunks for a query as a user"),
        "ask": Command("gensys.apps.rag.recipe:ask_main", "answer a question with citations"),
        "train": Command(
            "gensys.apps.rag.recipe:train_main", "nothing to train: says how the index and answers are made"
        ),
        "eval": Command(
            "gensys.apps.rag.recipe:eval_main", "Recall@k, MRR, nDCG@10, citation precision, latency"
        ),
        "predict": Command("gensys.apps.rag.recipe:predict_main", "alias of ask for batch input"),
    },
}


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _listing() -> str:
    lines = ["systems (gensys <system> <verb> --help):"]
    for name, verbs in SYSTEMS.items():
        lines.append(f"  {name:<10} {' | '.join(verbs)}")
    lines.append("")
    lines.append("commands:")
    for name, cmd in COMMANDS.items():
        state = "" if cmd.target else f"  [not built yet, {cmd.issue}]"
        lines.append(f"  {name:<10} {cmd.help}{state}")
    return "\n".join(lines)


def _run(cmd: Command, name: str, argv: list[str]) -> int:
    if cmd.target is None:
        if any(a in ("-h", "--help") for a in argv):
            print(f"usage: gensys {name} ...\n\n{cmd.help}\n\nnot built yet (tracked in issue {cmd.issue}).")
            return 0
        print(f"gensys {name}: not built yet (tracked in issue {cmd.issue})", file=sys.stderr)
        return 2
    func = cmd.load()
    return int(func(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `gensys` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="gensys",
        description="gensys: five generative-AI systems on one PyTorch stack.",
        epilog=_listing(),
        formatter_class=_Formatter,
    )
    parser.add_argument("command", nargs="?", help="a system or a command (see below)")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    if argv[0] == "--version":
        from gensys import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    try:
        if name in COMMANDS:
            return _run(COMMANDS[name], name, rest)
        if name in SYSTEMS:
            verbs = SYSTEMS[name]
            if not rest or rest[0] in ("-h", "--help"):
                sub = argparse.ArgumentParser(
                    prog=f"gensys {name}",
                    description=f"the {name} system",
                    epilog="verbs:\n"
                    + "\n".join(
                        f"  {v:<8} {c.help}" + ("" if c.target else f"  [not built yet, {c.issue}]")
                        for v, c in verbs.items()
                    ),
                    formatter_class=_Formatter,
                )
                sub.add_argument("verb", choices=list(verbs), help="what to do")
                sub.print_help()
                return 0 if rest else 2
            verb = rest[0]
            if verb not in verbs:
                print(
                    f"gensys {name}: unknown verb '{verb}' (choose from {', '.join(verbs)})", file=sys.stderr
                )
                return 2
            return _run(verbs[verb], f"{name} {verb}", rest[1:])
        print(f"gensys: unknown command '{name}' (see gensys --help)", file=sys.stderr)
        return 2
    except GensysError as e:
        print(f"gensys {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
