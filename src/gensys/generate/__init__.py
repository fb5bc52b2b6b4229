"""gensys.generate: decoding for every system (compose, translate, chat, caption, RAG).

Composable pieces: logits processors (`processors`), a `Stepper` per model kind (`stepper`), strategies
(`search`: greedy / sampling / beam search), streaming (`stream`), and one entry point `generate(model, ids,
mask, GenerationConfig(...))`.
"""

from gensys.generate.core import (
    GenerationConfig,
    GenerationOutput,
    Hypothesis,
    build_processors,
    generate,
    generate_steps,
)
from gensys.generate.processors import GenerationConfigError, LogitsProcessor, ProcessorList
from gensys.generate.stepper import (
    DecoderOnlyStepper,
    EncoderDecoderStepper,
    RecomputeStepper,
    Stepper,
    make_stepper,
)
from gensys.generate.stream import IncrementalDetokenizer, StreamEvent, stream

__all__ = [
    "DecoderOnlyStepper",
    "EncoderDecoderStepper",
    "GenerationConfig",
    "GenerationConfigError",
    "GenerationOutput",
    "Hypothesis",
    "IncrementalDetokenizer",
    "LogitsProcessor",
    "ProcessorList",
    "RecomputeStepper",
    "Stepper",
    "StreamEvent",
    "build_processors",
    "generate",
    "generate_steps",
    "make_stepper",
    "stream",
]
