"""Typed config of the translate system: data, tokenizer, MLM pretraining, fine-tuning, decoding.

Shipped files: `configs/translate/{tiny,demo,quality}.yaml`. Any key can be overridden on the command line as
`key.sub=value` (e.g. `data.pair=en-fr pretrain.steps=0 train.max_steps=2000`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gensys.models.seq2seq import Seq2SeqConfig
from gensys.train.config import TrainConfig

MULTI30K_SPLITS = ("train", "val", "test_2016_flickr")
LANGS = ("en", "de", "fr")


@dataclass
class DataConfig:
    """Where the sentence pairs come from. Multi30k by default; explicit files win over `pair`."""

    pair: str = "en-de"  # "<source>-<target>": reads translate/<split>.<lang>.gz under data_dir
    data_dir: str = ""  # "" = --data-dir / $GENSYS_DATA / the repo's data/ folder
    # Your own corpus: line-aligned plain or gzipped text, one sentence per line (all four or none).
    train_src: str = ""
    train_tgt: str = ""
    val_src: str = ""
    val_tgt: str = ""
    max_train_pairs: int = 0  # 0 = all; >0 keeps the first N (tiny runs and tests)
    max_val_pairs: int = 0
    max_len: int = 128  # tokens per side (EOS included); longer sentences are truncated
    tokens_per_batch: int = 4096  # padded tokens per micro-batch (batches are bucketed by length)

    def __post_init__(self) -> None:
        src, _, tgt = self.pair.partition("-")
        if not src or not tgt or src == tgt:
            raise ValueError(f"pair must look like 'en-de' (source-target), got {self.pair!r}")
        if self.max_len < 4:
            raise ValueError(f"max_len must be >= 4, got {self.max_len}")

    @property
    def src_lang(self) -> str:
        return self.pair.split("-")[0]

    @property
    def tgt_lang(self) -> str:
        return self.pair.split("-")[1]


@dataclass
class TokenizerConfig:
    """Joint byte-level BPE over both languages of the pair (one vocabulary, shared/tied embeddings)."""

    path: str = ""  # tokenizer.json to use; "" = <train.out_dir>/tokenizer.json, made by `prepare` if missing
    vocab_size: int = 8000
    min_frequency: int = 2


@dataclass
class PretrainConfig:
    """Masked-LM pretraining on monolingual text of both languages before fine-tuning (seed notes 3.2).

    The encoder reads a sentence with `mask_rate` of its tokens replaced by <mask>; the decoder reads the
    unmasked sentence shifted right behind <bos> and predicts every token (cross-entropy).
    """

    steps: int = 0  # 0 = no pretraining (fine-tune from random init)
    lr: float = 7e-4
    warmup_steps: int = 200
    mask_rate: float = 0.35
    extra_text: list[str] = field(
        default_factory=list
    )  # more monolingual files (plain/gzip, 1 sentence/line)
    max_sentences: int = 0  # 0 = all sentences of both train sides (+ extra_text)


@dataclass
class DecodeConfig:
    """Decoding defaults recorded in the checkpoint (predict/eval flags override them)."""

    beam: int = 5
    length_penalty: float = 1.0
    max_len_a: float = 1.5  # max new tokens = a * source tokens + b (capped by data.max_len)
    max_len_b: int = 10
    batch_size: int = 64  # sentences per decoding batch


@dataclass
class Config:
    """The whole translate recipe. `train.out_dir` holds everything a run writes: tokenizer.json,
    pretrain/{last,best}/ and the fine-tuning run's last/ and best/ (+ metrics.jsonl, loss.png).
    `model.vocab_size` is taken from the tokenizer."""

    init_from: str = ""  # fine-tune from these weights (e.g. another run's pretrain/last); pretrain.steps=0
    export_dir: str = ""  # when set, the best checkpoint is also written here in fp16 (e.g. models/translate)
    val_bleu_sentences: int = 200  # val sentences decoded greedily at each evaluation (0 = val loss only)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: Seq2SeqConfig = field(default_factory=Seq2SeqConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
