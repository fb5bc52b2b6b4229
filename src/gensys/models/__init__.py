"""gensys.models: one file per model family, each with a typed config and a builder.

`build_model(family, cfg_dict)` rebuilds a model from a checkpoint's config.json (`{"family": ..., "model":
{...}}`); the table below is the complete list of families.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def build_model(family: str, cfg_dict: dict[str, Any]) -> nn.Module:
    """Build the model of `family` from a config dict (as written by `dataclasses.asdict`)."""
    cfg_dict = {k: v for k, v in cfg_dict.items() if k != "family"}
    if family == "decoder_lm":
        from gensys.models.decoder_lm import DecoderLM, DecoderLMConfig

        return DecoderLM(DecoderLMConfig.from_dict(cfg_dict))
    if family == "seq2seq":
        from gensys.models.seq2seq import Seq2Seq, Seq2SeqConfig

        return Seq2Seq(Seq2SeqConfig.from_dict(cfg_dict))
    if family == "captioner":
        from gensys.models.captioner import Captioner, CaptionerConfig

        return Captioner(CaptionerConfig.from_dict(cfg_dict))
    if family == "reward":
        from gensys.models.heads import RewardConfig, RewardModel

        return RewardModel(RewardConfig.from_dict(cfg_dict))
    if family == "classifier":
        from gensys.models.heads import Classifier, ClassifierConfig

        return Classifier(ClassifierConfig.from_dict(cfg_dict))
    raise ValueError(
        f"unknown model family {family!r}; expected decoder_lm, seq2seq, captioner, reward, classifier"
    )


FAMILIES = ("decoder_lm", "seq2seq", "captioner", "reward", "classifier")

__all__ = ["FAMILIES", "build_model"]
