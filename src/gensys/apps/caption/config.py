"""Typed config of the captioning system: data, preprocessing, tokenizer, model, training, decoding and
post-processing.

Shipped files: `configs/caption/{tiny,demo,quality,quality_vit}.yaml`. Every field can be overridden on the
command line as `section.key=value` (e.g. `model.encoder=vit model.enc_pos=sinusoidal2d`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gensys.models.captioner import CaptionerConfig
from gensys.train.config import TrainConfig

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class DataConfig:
    """Where images and captions are, relative to `--data-dir` / $GENSYS_DATA (absolute paths also work).

    `captions` is a TSV (`split, image, caption_idx, caption`, or Flickr8k's `name.jpg#i<TAB>caption`) or a
    COCO-style captions JSON. A `{split}` placeholder in `captions` or `split_list` is replaced by the split
    name (e.g. `coco/captions_{split}.json`); `split_list` (one image name per line) restricts a split.
    """

    images: str = "caption/flickr8k_images_128.tar"  # a tar (plain or compressed) or a folder of images
    captions: str = "caption/captions.tsv"
    split_list: str = ""  # e.g. "caption/split_{split}.txt"; empty = the TSV split column / whole file
    train_split: str = "train"
    dev_split: str = "dev"
    max_train_images: int = 0  # 0 = all (small values make quick runs)
    max_dev_images: int = 0
    cache_dir: str = "runs/caption/cache"  # decoded uint8 image tensors + tokenizer (never committed)


@dataclass
class PreprocessConfig:
    """Image and caption preprocessing. The model input size is `model.image_size`."""

    crop_margin: int = 8  # images are cached at image_size + margin; training crops at random, eval centre
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    hflip: float = 0.5  # probability of a horizontal flip in training ("left" <-> "right" in its captions)
    max_caption_tokens: int = 30  # BPE tokens per caption (longer training captions are cut)
    captions_per_image: int = 5  # captions sampled per image in a training batch (0 = all)


@dataclass
class TokenizerConfig:
    vocab_size: int = 2000  # byte-level BPE trained on the training captions
    min_frequency: int = 2


@dataclass
class DecodeConfig:
    """Beam-search defaults stored with the checkpoint (the predictor's `beam`/`n_best` override them)."""

    beam: int = 3
    n_best: int = 3
    length_penalty: float = 1.0
    max_new_tokens: int = 24
    no_repeat_ngram_size: int = 3  # captions rarely repeat a trigram; beams of small models do


@dataclass
class PostConfig:
    """Post-processing of generated captions (see gensys.apps.caption.postprocess)."""

    fairness: bool = True  # neutralise gender/age/ethnicity words the model is not confident about
    fairness_threshold: float = 0.75  # minimum confidence (probability share) to keep such a word
    offensive_filter: bool = True  # ban blocklisted words in the beam and drop any left in the text
    extra_blocklist: list[str] = field(default_factory=list)


@dataclass
class EvalConfig:
    split: str = "dev"
    max_images: int = 0  # 0 = the whole split
    batch_size: int = 32
    attention_examples: int = 4  # attention-map PNGs written by `eval`
    out_dir: str = "runs/caption/eval"
    # During training: decode this many dev images at each evaluation and report CIDEr-D (0 = loss only).
    train_cider_images: int = 200


@dataclass
class LossConfig:
    """Training objective beyond next-token cross-entropy (which `train.label_smoothing` tunes)."""

    # Weight of the tag head's loss (needs model.tag_head: true). From scratch on Flickr8k the CNN encoder
    # collapsed without it: the 2026-11-28 quality run's captions were the same for every image.
    tag_weight: float = 0.0


@dataclass
class Config:
    """The whole captioning config (`gensys caption <verb> --config FILE key.sub=value ...`)."""

    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: CaptionerConfig = field(default_factory=CaptionerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    post: PostConfig = field(default_factory=PostConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    export_dir: str = ""  # after training, write best/ here as an fp16 checkpoint (e.g. models/caption)

    def __post_init__(self) -> None:
        if len(self.preprocess.mean) != self.model.in_channels or len(self.preprocess.std) != len(
            self.preprocess.mean
        ):
            raise ValueError("preprocess.mean/std need one value per input channel")
        if self.preprocess.crop_margin < 0:
            raise ValueError("preprocess.crop_margin must be >= 0")
        if self.loss.tag_weight < 0:
            raise ValueError("loss.tag_weight must be >= 0")
        if self.loss.tag_weight > 0 and not self.model.tag_head:
            raise ValueError("loss.tag_weight > 0 needs model.tag_head: true")


__all__ = [
    "Config",
    "DataConfig",
    "DecodeConfig",
    "EvalConfig",
    "LossConfig",
    "PostConfig",
    "PreprocessConfig",
    "TokenizerConfig",
]
