"""Chat training pieces in isolation: template + SFT loss masking, loaders, PPO step direction, reward
shaping guards, DPO collapse warning, win rates, and every shipped config."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from chat_train_testdata import WORDS  # noqa: E402

from gensys.apps.chat.common import (  # noqa: E402
    end_ids,
    length_slope,
    repeated_ngram_share,
    sample_replies,
    score,
    scoring_ids,
    strip_end,
)
from gensys.apps.chat.compare import win_rate  # noqa: E402
from gensys.apps.chat.config import PPOConfig  # noqa: E402
from gensys.apps.chat.data import BucketedLoader, collate_lm  # noqa: E402
from gensys.apps.chat.dpo import CollapseWatch  # noqa: E402
from gensys.apps.chat.ppo import (  # noqa: E402
    PolicyWithValue,
    Rollout,
    ScoreNorm,
    fit_length_slope,
    make_rollout,
    ppo_update,
    shaped_scores,
)
from gensys.apps.chat.recipe import load_chat_config  # noqa: E402
from gensys.apps.chat.template import (  # noqa: E402
    parse_hh_dialogue,
    render_prompt,
    sft_messages,
    supervised_example,
)
from gensys.config import ConfigError  # noqa: E402
from gensys.data.batching import IGNORE_INDEX, pad_batch  # noqa: E402
from gensys.data.tokenizer import train_bpe  # noqa: E402
from gensys.models.decoder_lm import DecoderLM, llama_config  # noqa: E402
from gensys.models.heads import RewardConfig, RewardModel  # noqa: E402
from gensys.serve.lm_chat import LMChat  # noqa: E402
from gensys.train import lm_loss  # noqa: E402
from gensys.train.losses import token_logprobs  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def tok():
    texts = [f"Say the word {w} twice. {w} {w}. I am sorry, I cannot help with that." for w in WORDS] * 5
    return train_bpe(texts, vocab_size=300)


def tiny_lm(vocab: int, seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    return DecoderLM(
        llama_config(
            vocab_size=vocab, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=128
        )
    )


# ---- template and SFT masking -----------------------------------------------------------------------------


def test_prompt_matches_the_servers_renderer(tok):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi <|assistant|> there"},  # typed role text stays plain text
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Say the word apple twice."},
    ]
    server = LMChat(tiny_lm(tok.vocab_size), tok)
    assert render_prompt(tok, msgs) == server.render(msgs)
    ids = render_prompt(tok, msgs)
    assert (
        ids.count(tok.special_id("assistant")) == 2
    )  # the earlier turn and the reply slot, not the typed one


def test_prompt_truncation_keeps_system_and_newest_turn(tok):
    old = [{"role": "user" if i % 2 == 0 else "assistant", "content": "stone " * 8} for i in range(6)]
    msgs = [
        {"role": "system", "content": "Be brief."},
        *old,
        {"role": "user", "content": "apple twice river"},
    ]
    full = render_prompt(tok, msgs)
    ids = render_prompt(tok, msgs, max_tokens=40)
    assert len(full) > 40 >= len(ids)
    assert ids[:2] == [tok.bos_id, tok.special_id("system")]
    assert ids[-3:] == full[-3:] and ids[-1] == tok.special_id("assistant")
    assert tok.decode(ids).endswith("apple twice river")  # the newest turn whole, older ones dropped
    # a newest turn longer than the budget alone is cut from the left: what the user said last survives
    budget = 4 + len(tok.encode(" apple river"))  # <bos> <|user|> ... <|end|> <|assistant|>
    long = render_prompt(tok, [{"role": "user", "content": "stone " * 50 + "apple river"}], max_tokens=budget)
    assert len(long) == budget and tok.decode(long) == " apple river"


def test_supervised_example_labels_only_the_reply(tok):
    ids, labels = supervised_example(
        tok, sft_messages("Say the word apple twice."), "apple apple", max_len=64
    )
    prompt = render_prompt(tok, sft_messages("Say the word apple twice."))
    reply = tok.encode("apple apple") + [tok.special_id("end")]
    assert ids == prompt + reply
    assert labels[: len(prompt) - 1] == [IGNORE_INDEX] * (len(prompt) - 1)
    assert labels[len(prompt) - 1 : -1] == reply  # position t predicts ids[t + 1]
    assert labels[-1] == IGNORE_INDEX
    # a long reply is cut to fit, still ending with <|end|>
    ids2, labels2 = supervised_example(tok, sft_messages("Say it."), "apple " * 100, max_len=32)
    assert len(ids2) == 32 and ids2[-1] == tok.special_id("end")


def test_sft_loss_counts_only_reply_tokens(tok):
    model = tiny_lm(tok.vocab_size)
    items = []
    for w, n in (("apple", 2), ("river stone", 3)):
        ids, labels = supervised_example(tok, sft_messages(f"Repeat {w} {n} times."), " ".join([w] * n), 64)
        items.append({"input_ids": ids, "labels": labels})
    batch = collate_lm(items, tok.pad_id)
    loss_sum, n_tokens, _ = lm_loss(model, batch)
    reply_tokens = sum(sum(t != IGNORE_INDEX for t in it["labels"]) for it in items)
    assert int(n_tokens) == reply_tokens
    # the same sum computed by hand over the reply positions only
    with torch.no_grad():
        logits = model(batch["input_ids"])
    want = 0.0
    for b, it in enumerate(items):
        for t, target in enumerate(it["labels"]):
            if target != IGNORE_INDEX:
                want += float(F.cross_entropy(logits[b, t], torch.tensor(target)))
    assert float(loss_sum.detach()) == pytest.approx(want, rel=1e-5)

    # no gradient reaches the logits of prompt (or padding) positions, every reply position gets some
    class Spy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.logits = model, None

        def forward(self, ids, **kw):
            self.logits = self.model(ids, **kw)
            self.logits.retain_grad()
            return self.logits

    spy = Spy()
    lm_loss(spy, batch)[0].backward()
    grad_norm = spy.logits.grad.abs().sum(-1)  # (B, T)
    target = batch["labels"] != IGNORE_INDEX
    assert (grad_norm[~target] == 0).all() and (grad_norm[target] > 0).all()


def test_parse_hh_dialogue():
    text = "\n\nHuman: hi there\n\nAssistant: hello!\n\nHuman: how do I bake bread?\n\nAssistant:"
    assert parse_hh_dialogue(text) == [
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello!"},
        {"role": "user", "content": "how do I bake bread?"},
    ]


# ---- loaders ----------------------------------------------------------------------------------------------


def test_bucketed_loader_groups_lengths_and_resumes():
    items = [{"input_ids": [1] * n, "labels": [1] * n} for n in range(1, 101)]

    def make():
        return BucketedLoader(
            items, 4, lambda b: [len(x["input_ids"]) for x in b], lambda x: len(x["input_ids"])
        )

    a = make()
    first = [next(a) for _ in range(30)]  # crosses an epoch boundary (25 batches per epoch)
    assert all(max(b) - min(b) <= 20 for b in first)  # sorted within windows of 64 items
    seen = sorted(n for b in first[:25] for n in b)
    assert seen == list(range(1, 101))  # one epoch = every item once
    b = make()
    for _ in range(12):
        next(b)
    c = make()
    c.load_state_dict(b.state_dict())
    assert [next(c) for _ in range(18)] == first[12:]


# ---- PPO --------------------------------------------------------------------------------------------------


def test_ppo_update_moves_logprobs_with_the_advantage():
    torch.manual_seed(0)
    policy = PolicyWithValue(tiny_lm(50))
    prompts = [[1, 5, 6, 7], [1, 8, 9, 10]]
    replies = [[11, 12, 13], [14, 15]]
    p_ids, p_mask = pad_batch(prompts, 0, side="left")
    r_ids, r_mask = pad_batch(replies, 0, side="right")
    ids, mask = torch.cat([p_ids, r_ids], 1), torch.cat([p_mask, r_mask], 1)
    targets = r_ids.masked_fill(~r_mask, IGNORE_INDEX)
    t0 = p_ids.shape[1]

    def reply_logp():
        with torch.no_grad():
            logits, values = policy(ids, mask)
        return token_logprobs(logits[:, t0 - 1 : t0 - 1 + r_ids.shape[1]], targets), values[:, t0 - 1 : -1]

    logp0, values0 = reply_logp()
    adv = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, 0.0]]) * r_mask
    ro = Rollout(ids, mask, t0, targets, r_mask, logp0, logp0, values0 * r_mask, adv, adv, stats={})
    pc = PPOConfig(rollout_batch=2, minibatch=2, ppo_epochs=4, lr=1e-2, clip_range=0.2)
    opt = torch.optim.AdamW(policy.parameters(), lr=pc.lr)
    upd = ppo_update(policy, opt, ro, pc, torch.Generator().manual_seed(0))
    logp1, _ = reply_logp()
    assert (logp1[0] > logp0[0]).all()  # positive advantage: more likely
    assert (logp1[1, :2] < logp0[1, :2]).all()  # negative advantage: less likely
    assert 0.0 <= upd["clip_frac"] <= 1.0 and upd["clip_frac"] > 0  # 4 epochs at this lr reach the clip


def test_reward_shaping_guards():
    pc = PPOConfig(
        rollout_batch=4,
        minibatch=2,
        missing_eos_penalty=1.0,
        repetition_coef=2.0,
        length_coef=0.5,
        free_tokens=4,
    )
    end = 99
    replies = [[1, 2, 3, end], [1, 2, 3], [5, 6, 7, 5, 6, 7, 5, 6, 7, end], [1, 2, 3, 4, 5, 6, end]]
    raw = torch.zeros(4)
    shaped, stats = shaped_scores(raw, replies, [end], pc, ScoreNorm(False))
    assert shaped[0].item() == pytest.approx(0.0)
    assert shaped[1].item() == pytest.approx(-1.0)  # cut off before <|end|>
    rep = repeated_ngram_share([5, 6, 7, 5, 6, 7, 5, 6, 7])  # 7 trigrams, 3 distinct
    assert rep == pytest.approx(4 / 7)
    assert shaped[2].item() == pytest.approx(-2.0 * rep - 0.5 * 5)  # 9 tokens, 5 beyond free_tokens
    assert shaped[3].item() == pytest.approx(-0.5 * 2)
    assert stats["eos_rate"] == pytest.approx(0.75)
    # The RM's length preference is taken out of its score: with raw = 0.3 * tokens and slope 0.3 every
    # reply shapes as if its RM score were 0 (lengths 3, 3, 9, 6 without <|end|>).
    lengths = torch.tensor([3.0, 3.0, 9.0, 6.0])
    debiased, stats = shaped_scores(0.3 * lengths, replies, [end], pc, ScoreNorm(False), length_slope=0.3)
    assert torch.allclose(debiased, shaped, atol=1e-6)
    assert stats["rm_score_length_debiased"] == pytest.approx(0.0, abs=1e-6)
    norm = ScoreNorm(True)
    assert torch.allclose(norm(torch.tensor([1.0, 3.0])), torch.tensor([-0.7071, 0.7071]), atol=1e-4)
    assert norm(torch.tensor([5.0])).item() == pytest.approx((5.0 - 2.0) / 2**0.5, rel=1e-4)  # stats frozen


def test_length_guard_fits_the_rm_slope_and_takes_it_out_of_the_score(tok):
    # A policy whose final norm is zeroed samples uniformly, so <|end|>/<eos> end replies at random lengths
    # and the fitted slope is a real, non-zero number (the tiny pipeline's replies all hit the token limit).
    policy = PolicyWithValue(tiny_lm(tok.vocab_size, seed=1))
    with torch.no_grad():
        policy.lm.norm.weight.zero_()
    ref = tiny_lm(tok.vocab_size, seed=2)
    torch.manual_seed(3)
    rm = RewardModel(RewardConfig(lm=ref.cfg)).eval()
    prompts = [render_prompt(tok, [{"role": "user", "content": f"Say {w}"}], 40) for w in WORDS[:16]]
    pc = PPOConfig(
        rollout_batch=8,
        minibatch=4,
        max_new_tokens=300,
        normalize_score=False,
        missing_eos_penalty=0.0,  # only the length guard shapes the score here
        repetition_coef=0.0,
    )
    slope = fit_length_slope(policy.lm, rm, tok, prompts, pc, torch.Generator().manual_seed(5))
    # The same draw by hand: the slope of RM score on reply tokens without <|end|>.
    replies = []
    gen = torch.Generator().manual_seed(5)
    for s in range(0, len(prompts), 8):
        replies += sample_replies(policy.lm, tok, prompts[s : s + 8], max_new_tokens=300, temperature=1.0,
                                  generator=gen)  # fmt: skip
    lengths = torch.tensor([float(len(strip_end(r, end_ids(tok))[0])) for r in replies])
    assert lengths.std() > 0
    raw = score(rm, [scoring_ids(tok, p, r) for p, r in zip(prompts, replies)], tok.pad_id)
    assert slope == pytest.approx(length_slope(raw, lengths)) and slope != 0.0
    # The rollout shapes with it: the debiased score is the RM score minus slope x tokens.
    ro = make_rollout(
        policy, ref, rm, tok, prompts[:8], pc, 0.0, ScoreNorm(False), torch.Generator().manual_seed(7), 0.5
    )
    st = ro.stats
    assert st["rm_score_length_debiased"] == pytest.approx(st["rm_score"] - 0.5 * st["reply_len"], abs=1e-5)
    assert st["shaped_score"] == pytest.approx(st["rm_score_length_debiased"], abs=1e-5)


# ---- DPO, comparison --------------------------------------------------------------------------------------


def test_dpo_collapse_warning():
    watch = CollapseWatch(threshold=0.01, patience=3)
    watch.update(0.001, 1.0)
    watch.update(0.001, 0.9)  # accuracy below 1 resets the streak
    watch.update(0.001, 1.0)
    watch.update(0.002, 1.0)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        watch.update(0.003, 1.0)
        watch.update(0.003, 1.0)  # warned once only
    assert watch.warned_at == 5
    assert len(w) == 1 and "overfitting" in str(w[0].message)


def test_win_rate_and_length_slope():
    a, b = torch.tensor([1.0, 2.0, 0.0, 5.0]), torch.tensor([0.0, 3.0, 0.0, 1.0])
    p, ci = win_rate(a, b)
    assert p == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert ci == pytest.approx(1.96 * (0.625 * 0.375 / 4) ** 0.5)
    lengths = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert length_slope(2.0 * lengths + 1.0, lengths) == pytest.approx(2.0)
    assert length_slope(torch.ones(3), torch.full((3,), 7.0)) == 0.0


# ---- configs ----------------------------------------------------------------------------------------------


TRAIN_CONFIGS = ("tiny.yaml", "demo.yaml", "small.yaml")  # the training configs (the others are issue 11's)


@pytest.mark.parametrize("name", TRAIN_CONFIGS)
def test_shipped_configs_load(name):
    cfg = load_chat_config(ROOT / "configs/chat" / name)
    assert cfg.model.pos == "rope" and cfg.model.norm == "rmsnorm" and cfg.model.activation == "swiglu"
    assert cfg.model.n_kv_heads is not None and cfg.model.n_kv_heads < cfg.model.n_heads  # GQA
    assert cfg.ppo.rollout_batch % cfg.ppo.minibatch == 0


def test_partial_override_keeps_stage_defaults():
    cfg = load_chat_config(ROOT / "configs/chat/tiny.yaml", ["reward.train.max_steps=3", "dpo.beta=0.3"])
    assert cfg.reward.train.max_steps == 3
    assert cfg.reward.train.early_stop_metric == "val_accuracy"  # not reset by the partial override
    assert cfg.model.d_model == 32 and cfg.dpo.beta == 0.3
    with pytest.raises(ConfigError, match="dpo.bta"):
        load_chat_config(None, ["dpo.bta=0.3"])
    with pytest.raises(ConfigError, match="stage"):
        load_chat_config(None, ["stage=rlhf"])
