"""gensys.generate: decoding for every system (compose, translate, chat, caption, RAG).

Composable pieces: logits processors (`processors`), a `Stepper` per model kind (`stepper`), strategies
(`search`: greedy / sampling / beam search), streaming (`stream`), and one entry point `generate(model, ids,
mask, GenerationConfig(...))`.

After the prompt, each step runs either the model's modules with a growing `KVCache` or, by default where
the model offers it (`step_spec()`), one fixed-shape function over preallocated buffers
(`gensys.nn.static_decode`, `StaticStepper`), optionally compiled: `GenerationConfig.decode_path`.
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
    StaticStepper,
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
    "StaticStepper",
    "Stepper",
    "StreamEvent",
    "build_processors",
    "generate",
    "generate_steps",
    "make_stepper",
    "stream",
]
