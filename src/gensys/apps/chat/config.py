"""Typed config of the chat training pipeline: pretrain -> SFT -> reward model -> PPO and DPO -> comparison.

Shipped files: `configs/chat/{tiny,demo,small}.yaml`. One run directory holds every stage:

    <run_dir>/tokenizer.json
    <run_dir>/pretrain/{last,best}/   next-token LM on the pretraining text (+ eval.json: WikiText-2 test ppl)
    <run_dir>/sft/{last,best}/        instruction tuning, loss on assistant tokens only
    <run_dir>/reward/{last,best}/     SFT trunk + scalar head on preference pairs (+ eval.json: accuracy)
    <run_dir>/ppo/last/               policy (decoder_lm) after PPO against the reward model
    <run_dir>/dpo/{last,best}/        policy after DPO against the frozen SFT model
    <run_dir>/compare/                win rates vs SFT judged by the reward model (results.json, table.md,
                                      win_rates.png)

Each stage reads the previous stage's checkpoint (`init_from` overrides that) and writes `done.json` when it
finishes, so `stage=all` skips finished stages after an interruption. A stage's `train.out_dir` is always
`<run_dir>/<stage>` (the value in the file is ignored).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gensys.models.decoder_lm import DecoderLMConfig, llama_config
from gensys.train.config import TrainConfig

STAGES = ("pretrain", "sft", "reward", "ppo", "dpo", "compare")
Stage = Literal["pretrain", "sft", "reward", "ppo", "dpo", "compare", "all"]
PRETRAIN_SOURCES = ("shakespeare", "wikitext_valid", "aeslc", "stackexchange", "multi30k")


@dataclass
class DataConfig:
    """Where the text comes from (paths are fixed names under `data_dir`, see data/chat/SOURCE.md)."""

    data_dir: str = ""  # "" = $GENSYS_DATA or the repo's data/ folder
    pretrain_sources: list[str] = field(default_factory=lambda: list(PRETRAIN_SOURCES))
    extra_text: list[str] = field(default_factory=list)  # more pretraining files (plain/gzip text)
    max_chars_per_source: int = 0  # 0 = all; >0 keeps a seeded random subset of each source's documents
    val_every: int = 50  # every Nth pretraining document is held out for validation
    wikitext_eval_tokens: int = 0  # WikiText-2 test tokens scored for held-out perplexity (0 = all)
    sft_dev_fraction: float = 0.05  # share of sft_train.jsonl held out (by a hash of the id) as the dev set
    max_sft_examples: int = 0  # 0 = all (tiny runs)
    max_pref_train: int = 0  # preference pairs used for training (0 = all 2023)
    max_pref_eval: int = 0  # preference pairs scored for accuracy (0 = all 289)
    # Pairs held out of the HH train split (seeded draw) to pick the RM's and DPO's best/ checkpoints.
    # 0 = they are picked on the eval split itself, which then overstates what it reports; with dev pairs
    # the eval split is only ever reported.
    pref_dev_pairs: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.pretrain_sources) - set(PRETRAIN_SOURCES))
        if unknown:
            raise ValueError(f"pretrain_sources: unknown {unknown}; known {list(PRETRAIN_SOURCES)}")
        if not 0.0 < self.sft_dev_fraction < 1.0:
            raise ValueError(f"sft_dev_fraction must be in (0, 1), got {self.sft_dev_fraction}")
        if self.val_every < 2:
            raise ValueError(f"val_every must be >= 2, got {self.val_every}")


@dataclass
class TokenizerConfig:
    """Byte-level BPE with the chat role tokens (<|system|> <|user|> <|assistant|> <|end|>)."""

    path: str = ""  # an existing tokenizer.json; "" = <run_dir>/tokenizer.json, trained if missing
    vocab_size: int = 4096
    min_frequency: int = 2
    max_chars: int = 4_000_000  # training text for the BPE merges (a seeded sample of the documents)


@dataclass
class PretrainConfig:
    """Next-token prediction on packed documents (EOS between documents, no loss across a boundary)."""

    init_from: str = ""  # "" = random init
    seq_len: int = 256
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(lr=1e-3, warmup_steps=50, max_steps=500, micro_batch_size=8)
    )


@dataclass
class SFTConfig:
    """Supervised fine-tuning on instruction -> response pairs; loss only on the assistant's tokens."""

    init_from: str = ""  # "" = <run_dir>/pretrain
    max_len: int = 384  # tokens per example (prompt + response + <|end|>); longer ones are truncated
    pack: bool = True  # whole examples share rows of max_len (block-diagonal attention); false: one per row
    system_prompt: str = ""  # "" = no system turn
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            lr=5e-4, warmup_steps=20, max_steps=300, micro_batch_size=8, weight_decay=0.0, eval_every=100
        )
    )


@dataclass
class RewardStageConfig:
    """Reward model: SFT trunk + scalar head, trained so that r(chosen) - r(rejected) clears `margin`."""

    init_from: str = ""  # "" = <run_dir>/sft
    loss: Literal["bradley_terry", "margin"] = "bradley_terry"  # -log s(r_w - r_l - m) | max(0, m - gap)
    margin: float = 0.0
    max_len: int = 384
    max_prompt_len: int = 256
    # Vote-based helpfulness pairs from the Stack Exchange answers (higher vs lower score on one question).
    se_pairs: int = 0  # 0 = off; >0 adds up to this many pairs to training (10% more are held out)
    se_min_score_gap: int = 2
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            lr=1e-4,
            warmup_steps=20,
            max_steps=300,
            micro_batch_size=8,
            weight_decay=0.0,
            eval_every=100,
            early_stop_metric="val_accuracy",
            early_stop_mode="max",
        )
    )


@dataclass
class PPOConfig:
    """PPO against the reward model (Ouyang et al. 2022): policy = SFT + value head, reference = frozen SFT.

    Reward of a response = normalised RM score - guards, spread as -kl_coef * KL per token plus the score on
    the last token. Guards against reward hacking: `missing_eos_penalty` (rambling to the length limit),
    `repetition_coef` x share of repeated 3-grams, `length_coef` per token beyond `free_tokens`, and
    `length_debias` (the RM's length preference removed from its score).
    """

    init_from: str = ""  # policy and reference; "" = <run_dir>/sft
    reward_from: str = ""  # "" = <run_dir>/reward
    iterations: int = 40
    rollout_batch: int = 16  # prompts sampled per iteration
    minibatch: int = 8
    ppo_epochs: int = 2  # passes over each rollout batch
    prompt_sources: list[str] = field(default_factory=lambda: ["hh", "sft"])
    max_prompt_len: int = 128
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_k: int = 0  # 0 = full distribution (what the KL term assumes)
    lr: float = 1e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    kl_coef: float = 0.05
    kl_target: float = 0.0  # >0: adapt kl_coef toward this per-sequence KL (Ziegler et al. 2019)
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.1
    normalize_score: bool = True  # standardise RM scores with the first batch's mean/std
    missing_eos_penalty: float = 1.0
    repetition_coef: float = 1.0
    length_coef: float = 0.0
    free_tokens: int = 64
    # A small RM can prefer short (or long) replies for their length alone; PPO then wins by writing
    # one-word replies. With length_debias the RM's linear length preference, fitted by least squares on the
    # SFT policy's replies to `debias_prompts` training prompts before the first update, is taken out of the
    # score (score - slope * reply tokens), so length earns nothing either way.
    length_debias: bool = True
    debias_prompts: int = 64
    seed: int = 0
    device: str = "auto"  # auto: cuda if available, else cpu
    log_every: int = 1
    save_every: int = 10  # iterations between last/ checkpoints (0 = only at the end)

    def __post_init__(self) -> None:
        if self.rollout_batch % self.minibatch:
            raise ValueError(f"rollout_batch {self.rollout_batch} must be a multiple of minibatch")
        bad = sorted(set(self.prompt_sources) - {"hh", "sft"})
        if bad:
            raise ValueError(f"prompt_sources: unknown {bad}; expected 'hh' and/or 'sft'")


@dataclass
class DPOConfig:
    """DPO (Rafailov et al. 2023) on the preference pairs, from SFT with the SFT model as frozen reference."""

    init_from: str = ""  # "" = <run_dir>/sft
    beta: float = 0.1
    label_smoothing: float = 0.0
    nll_coef: float = 0.0  # > 0: + nll_coef x the chosen reply's per-token NLL (RPO; see losses.dpo_loss)
    max_len: int = 384
    max_prompt_len: int = 256
    collapse_loss: float = 0.01  # warn when the batch loss stays below this with accuracy 1.0 ...
    collapse_patience: int = 10  # ... for this many consecutive batches (overfitting)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            lr=5e-5, warmup_steps=10, max_steps=200, micro_batch_size=8, weight_decay=0.0, eval_every=100
        )
    )


@dataclass
class CompareConfig:
    """Win rate of PPO / DPO against SFT on held-out prompts, judged by the reward model."""

    policies: list[str] = field(default_factory=lambda: ["ppo", "dpo"])
    hh_prompts: int = 64  # from the preference eval split (never trained on by the RM, PPO or DPO)
    user_prompts: int = 64  # from eval_user_oriented_252.jsonl (evaluation only)
    samples_per_prompt: int = 1
    max_prompt_len: int = 128
    max_new_tokens: int = 48
    temperature: float = 0.7
    top_k: int = 40
    seed: int = 1234
    batch_size: int = 16


@dataclass
class Config:
    """The chat training pipeline. `stage=all` runs every stage in order (the one documented command)."""

    stage: Stage = "all"
    run_dir: str = "runs/chat/demo"
    export_dir: str = ""  # e.g. models/chat: writes policy/ and reward/ there in fp16 after the run
    export_policy: Literal["auto", "ppo", "dpo", "sft"] = "auto"  # auto: higher RM win rate vs SFT
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: DecoderLMConfig = field(
        default_factory=lambda: llama_config(
            vocab_size=4096, d_model=192, n_layers=4, n_heads=6, n_kv_heads=2, d_ff=512, max_seq_len=512
        )
    )
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    reward: RewardStageConfig = field(default_factory=RewardStageConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
