"""The whole chat training pipeline on a tiny model and a tiny synthetic data tree, end to end:
pretrain -> SFT -> reward model -> PPO -> DPO -> comparison -> export. Each stage must move its weights in
the direction its objective asks for, measured against the checkpoint it started from."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from chat_train_testdata import write_data  # noqa: E402

from gensys.apps.chat.common import load_lm, load_reward_model, stage_checkpoint, stage_dir  # noqa: E402
from gensys.apps.chat.data import (  # noqa: E402
    collate_lm,
    collate_pairs,
    pretrain_documents,  # noqa: E402
    read_preference,
    read_sft,
)
from gensys.apps.chat.dpo import pair_logprobs  # noqa: E402
from gensys.apps.chat.pretrain import PackedRows, pack  # noqa: E402
from gensys.apps.chat.recipe import (  # noqa: E402
    eval_main,
    load_chat_config,
    predict_main,
    prepare_main,
    train,
    train_main,
)
from gensys.apps.chat.reward import build_reward_model, encode_pairs, pair_scores  # noqa: E402
from gensys.apps.chat.sft import encode_examples  # noqa: E402
from gensys.checkpoint import load_config as ckpt_config  # noqa: E402
from gensys.errors import GensysError  # noqa: E402
from gensys.models.decoder_lm import DecoderLM  # noqa: E402
from gensys.train import lm_loss, seed_everything  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Run every stage once with configs/chat/tiny.yaml; returns (cfg, results)."""
    tmp = tmp_path_factory.mktemp("chat_train")
    data = write_data(tmp / "data")
    overrides = [
        f"data.data_dir={data}",
        f"run_dir={tmp / 'run'}",
        f"export_dir={tmp / 'export'}",
        "reward.se_pairs=4",  # the vote-based Stack Exchange pairs too
    ]
    cfg = load_chat_config(ROOT / "configs/chat/tiny.yaml", overrides)
    return cfg, train(cfg)


def _mean_lm_loss(model, batch) -> float:
    with torch.no_grad():
        loss_sum, n, _ = lm_loss(model.eval(), batch)
    return float(loss_sum) / int(n)


def test_every_stage_finished_and_wrote_its_figures(run):
    cfg, results = run
    for stage in ("pretrain", "sft", "reward", "ppo", "dpo", "compare"):
        assert (stage_dir(cfg, stage) / "done.json").is_file(), stage
        assert stage in results
    pre = results["pretrain"]
    assert 1.0 < pre["wikitext2_test_ppl"] < 320  # better than uniform over the 320-token vocabulary
    assert pre["wikitext2_test_word_ppl"] > pre["wikitext2_test_ppl"]  # a word spans >= 1 token
    ppo_log = [
        json.loads(line) for line in (stage_dir(cfg, "ppo") / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in ppo_log] == [1, 2]
    for key in ("rm_score", "kl", "entropy", "clip_frac", "approx_kl", "reply_len", "eos_rate", "repetition"):
        assert all(key in r for r in ppo_log), key
    # The length guard fitted the RM's length preference before the first update and removed it.
    slope = results["ppo"]["length_slope_removed"]
    # 0.0 here, where every tiny reply runs to max_new_tokens; test_chat_train_units checks a non-zero slope
    assert math.isfinite(slope)
    for r in ppo_log:
        expected = r["rm_score"] - slope * r["reply_len"]
        assert r["rm_score_length_debiased"] == pytest.approx(expected, abs=1e-4)
    dpo_log = (stage_dir(cfg, "dpo") / "metrics.jsonl").read_text()
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margins"):
        assert key in dpo_log


def test_pretraining_lowers_the_loss_on_its_data(run):
    cfg, _ = run
    trained, tok = load_lm(stage_checkpoint(cfg, "pretrain"))
    seed_everything(cfg.seed)  # the stage's own initialisation
    init = DecoderLM(dataclasses.replace(cfg.model, vocab_size=tok.vocab_size))
    rows = PackedRows(pack(tok, pretrain_documents(cfg.data, cfg.seed)[0], cfg.pretrain.seq_len))
    batch = {k: torch.stack([rows[i][k] for i in range(8)]) for k in ("input_ids", "labels")}
    assert _mean_lm_loss(trained, batch) < _mean_lm_loss(init, batch) - 0.3


def test_sft_lowers_the_reply_loss_on_held_out_examples(run):
    cfg, _ = run
    sft_model, tok = load_lm(stage_checkpoint(cfg, "sft"))
    base, _ = load_lm(stage_checkpoint(cfg, "pretrain"))
    dev = read_sft(cfg.data)[1]
    batch = collate_lm(encode_examples(tok, dev, cfg.sft.max_len), tok.pad_id)
    assert _mean_lm_loss(sft_model, batch) < _mean_lm_loss(base, batch) - 0.3


def test_reward_model_ranks_chosen_above_rejected(run):
    cfg, results = run
    assert results["reward"]["eval_accuracy_last"] >= 0.75
    assert results["reward"]["train_pairs_se"] == 4 and results["reward"]["eval_se_pairs"] == 1
    # best/ was chosen on dev pairs carved out of train (tiny.yaml: 4), the eval split only reported
    assert results["reward"]["dev_pairs"] == 4
    train, dev = read_preference(cfg.data, "train"), read_preference(cfg.data, "dev")
    everything = read_preference(dataclasses.replace(cfg.data, pref_dev_pairs=0), "train")
    assert len(dev) == 4 and len(train) + 4 == len(everything)
    assert sorted(map(repr, train + dev)) == sorted(map(repr, everything))  # a partition of the train file
    assert 0.0 <= results["reward"]["eval_accuracy_best"] <= 1.0
    assert 0.0 <= results["reward"]["eval_se_accuracy_last"] <= 1.0
    rm, tok = load_reward_model(stage_checkpoint(cfg, "reward"))
    seed_everything(cfg.seed)  # same fresh head as the stage drew
    rm0, _ = build_reward_model(stage_checkpoint(cfg, "sft"))
    items = encode_pairs(tok, read_preference(cfg.data, "train")[:16], cfg.reward.max_len, 40)
    batch = collate_pairs(items, tok.pad_id)
    with torch.no_grad():
        gap = [float((lambda w, l: (w - l).mean())(*pair_scores(m.eval(), batch))) for m in (rm0, rm)]
    assert gap[1] > gap[0] + 0.1


def test_dpo_raises_the_implicit_reward_margin(run):
    cfg, _ = run
    policy, tok = load_lm(stage_checkpoint(cfg, "dpo"))
    ref, _ = load_lm(stage_checkpoint(cfg, "sft"))
    items = encode_pairs(tok, read_preference(cfg.data, "train")[:16], cfg.dpo.max_len, 40)
    batch = collate_pairs(items, tok.pad_id)
    with torch.no_grad():
        pc, pr = pair_logprobs(policy.eval(), batch)
        rc, rr = pair_logprobs(ref.eval(), batch)
    assert float(((pc - rc) - (pr - rr)).mean()) > 1.0


def test_ppo_changed_the_policy_and_kept_it_loadable(run):
    cfg, _ = run
    ppo_model, _ = load_lm(stage_checkpoint(cfg, "ppo"))
    sft_model, _ = load_lm(stage_checkpoint(cfg, "sft"))
    diffs = [(a - b).abs().max().item() for a, b in zip(ppo_model.parameters(), sft_model.parameters())]
    assert max(diffs) > 0
    assert ckpt_config(stage_checkpoint(cfg, "ppo"))["family"] == "decoder_lm"


def test_comparison_and_export(run):
    cfg, results = run
    res = results["compare"]
    assert set(res["win_rate_vs_sft"]) == {"ppo", "dpo"}
    # tiny.yaml: 4 + 4 prompts x 2 samples; prompts, not samples, are the compared units
    assert res["samples_per_prompt"] == 2 and res["prompt_subsets"] == {"hh": 4, "user": 4}
    half_width = res["win_rate_vs_sft"]["ppo"]["all"][1]
    p = res["win_rate_vs_sft"]["ppo"]["all"][0]
    assert half_width == pytest.approx(1.96 * math.sqrt(max(p * (1 - p), 1e-12) / 8))
    assert results["dpo"]["dev_pairs"] == 4 and "eval_reward_accuracy" in results["dpo"]
    for table in (res["win_rate_vs_sft"], res["lc_win_rate_vs_sft"]):
        for per_subset in table.values():
            assert 0.0 <= per_subset["all"][0] <= 1.0
    out = stage_dir(cfg, "compare")
    assert (out / "win_rates.png").stat().st_size > 1000
    assert "| PPO |" in (out / "table.md").read_text()
    # the exported policy is what the server's chat fallback loads; stored in fp16
    from gensys.serve.lm_chat import LMChat

    export = Path(cfg.export_dir)
    assert ckpt_config(export / "policy")["weights_dtype"] == "float16"
    chat = LMChat.load(export / "policy")
    reply = chat.complete(
        [{"role": "user", "content": "Say the word apple twice."}], params={"max_tokens": 4}
    )
    assert reply["finish_reason"] in ("stop", "length")
    rm, _ = load_reward_model(export / "reward")
    assert ckpt_config(export / "reward")["family"] == "reward"
    assert json.loads((export / "metrics.json").read_text())["policy_stage"] in ("ppo", "dpo")


def test_stage_all_skips_finished_stages(run, capsys):
    cfg, _ = run
    before = (stage_dir(cfg, "sft") / "done.json").stat().st_mtime_ns
    args = ["--config", str(ROOT / "configs/chat/tiny.yaml"), f"data.data_dir={cfg.data.data_dir}"]
    assert train_main([*args, f"run_dir={cfg.run_dir}"]) == 0
    assert (stage_dir(cfg, "sft") / "done.json").stat().st_mtime_ns == before
    assert "already done" in capsys.readouterr().err


def test_eval_predict_and_prepare_commands(run, capsys, monkeypatch, tmp_path):
    cfg, results = run
    common = ["--config", str(ROOT / "configs/chat/tiny.yaml"), f"data.data_dir={cfg.data.data_dir}"]
    assert eval_main([*common, f"run_dir={cfg.run_dir}", "--what", "perplexity,reward"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["perplexity"]["wikitext2_test_ppl"] == pytest.approx(results["pretrain"]["wikitext2_test_ppl"])
    assert out["reward"]["accuracy"] == pytest.approx(results["reward"]["eval_accuracy_last"])

    monkeypatch.setattr("sys.stdin", io.StringIO("Say the word apple twice.\n\nSay the word river twice.\n"))
    assert predict_main(["--ckpt", str(Path(cfg.export_dir) / "policy"), "--max-new-tokens", "4"]) == 0
    replies = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in replies] == ["Say the word apple twice.", "Say the word river twice."]
    assert all(r["finish_reason"] in ("stop", "length") for r in replies)

    # prepare trains a fresh tokenizer, but never over the one a trained run depends on
    with pytest.raises(GensysError, match="already belongs"):
        prepare_main([*common, f"run_dir={cfg.run_dir}"])
    assert prepare_main([*common, f"run_dir={tmp_path / 'fresh'}"]) == 0
    assert json.loads(capsys.readouterr().out)["vocab_size"] == 320
