"""End to end on the tiny config: prepare + train a few steps, then suggest, eval and predict."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from gensys.apps.compose.predictor import CALIBRATION_FILE, load_predictor
from gensys.apps.compose.recipe import eval_main, memory_main, predict_main, prepare_main, train_main
from gensys.apps.compose.triggering import ComposeInputError

TINY = "configs/compose/tiny.yaml"
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("compose")
    common = [f"data.prepared_dir={tmp}/prep", f"train.out_dir={tmp}/train"]
    assert prepare_main(["--config", str(ROOT / TINY), *common]) == 0
    argv = ["--config", str(ROOT / TINY), *common, "train.max_steps=4", f"export_dir={tmp}/export"]
    assert train_main([*argv, "calibrate_emails=1"]) == 0
    return {"tmp": tmp, "train": tmp / "train", "export": tmp / "export", "common": common}


def test_training_wrote_checkpoints_ngram_and_calibration(trained):
    train, export = trained["train"], trained["export"]
    records = [json.loads(x) for x in (train / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 2 and all(0 < x < 10 for x in losses)
    assert any("val_loss" in r for r in records)
    assert (train / "ngram.json.gz").is_file()
    cfg = json.loads((export / "config.json").read_text())
    assert cfg["weights_dtype"] == "float16" and cfg["compose"]["suggest"]["num_beams"] == 2
    calib = json.loads((export / CALIBRATION_FILE).read_text())
    assert 0.0 <= calib["min_confidence"] <= 1.0 and calib["target_trigger_rate"] == 0.2
    # The ∞-gram memory of the train emails, with weights fitted on dev, and the predictor uses it.
    meta = json.loads((export / "memory.json").read_text())
    assert len(meta["weights"]) == meta["max_match"] + 1 and meta["weights"][0] == 0.0
    assert all(0.0 <= w < 1.0 for w in meta["weights"]) and meta["fit_positions"] > 0
    assert meta["dev_perplexity_with_memory"] <= meta["dev_perplexity_lm"] + 1e-6
    assert load_predictor(export).backend.memory is not None
    assert load_predictor(export, use_memory=False).backend.memory is None


def test_suggest_returns_a_well_formed_answer(trained):
    pred = load_predictor(trained["export"], min_confidence=0.0, latency_budget_ms=0)
    keys = {"suggestion", "confidence", "triggered", "reason", "latency_ms", "debounce_ms"}
    r = pred.suggest("Thanks for the update. Please let me ", subject="Budget", draft_id="d")
    assert set(r) == keys
    assert isinstance(r["suggestion"], str) and 0.0 <= r["confidence"] <= 1.0 and r["latency_ms"] > 0
    assert r["triggered"] == (r["reason"] == "ok") == bool(r["suggestion"])
    assert "\n" not in r["suggestion"] and not r["suggestion"].startswith(" ")
    # Not triggered: nothing typed yet but a partial word, and the cursor mid-line.
    assert pred.suggest("Hel")["reason"] == "too_short"
    assert pred.suggest("Please let me know", cursor=7)["reason"] == "cursor_mid_line"
    # The calibrated threshold withholds what it should; a threshold of 1 withholds everything.
    strict = load_predictor(trained["export"], min_confidence=1.0, latency_budget_ms=0)
    out = strict.suggest_batch([{"text": "Please let me "}, {"text": "I will send the "}])
    assert all(not o["triggered"] and o["suggestion"] == "" for o in out)
    assert {o["reason"] for o in out} <= {"low_confidence", "empty", "too_long_word", "inconsistent"}


def test_latency_budget_gives_up_cleanly(trained):
    pred = load_predictor(trained["export"], min_confidence=0.0, latency_budget_ms=1e-6)
    r = pred.suggest("Please let me ")
    assert (r["triggered"], r["reason"], r["suggestion"]) == (False, "over_budget", "")


@pytest.mark.parametrize(
    "req, status",
    [({"text": ""}, 400), ({"text": "x" * (1 << 20)}, 413), ({"text": b"\xff\xfe bad bytes"}, 400)],
)
def test_bad_input_is_a_clear_client_error(trained, req, status):
    pred = load_predictor(trained["export"])
    with pytest.raises(ComposeInputError) as info:
        pred.suggest_batch([{"text": "fine "}, req])  # one bad request fails the call before any work
    assert info.value.http_status == status
    with pytest.raises(ComposeInputError):
        pred.suggest_batch({"text": "not a list"})


def test_eval_writes_report_table_and_plot(trained, capsys):
    out = trained["tmp"] / "eval"
    argv = ["--config", str(ROOT / TINY), *trained["common"], "--ckpt", str(trained["export"])]
    sizes = ["eval.test_emails=2", "eval.dev_emails=1", "eval.ppl_emails=4"]
    assert eval_main([*argv, "--out", str(out), *sizes]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["perplexity"]["perplexity"] > 1 and report["perplexity"]["with_memory"] > 1
    for name in ("transformer", "ngram"):
        m = report["systems"][name]["at_same_trigger_rate"]
        assert 0 <= m["trigger_rate"] <= 0.2 + 1e-9
        assert all(0 <= m[f"em@{n}"] <= 1 for n in range(1, 6))
        assert m["em@1"] >= m["em@3"] >= m["em@5"]
        assert report["systems"][name]["latency_ms_all_requests"]["p90"] > 0
    assert (out / "em_vs_trigger.png").stat().st_size > 1000
    points = [json.loads(x) for x in (out / "points_transformer.jsonl").read_text().splitlines()]
    assert points and {"email", "email_id", "cursor", "suggestion", "confidence", "reason"} <= set(points[0])
    assert "| transformer | same rate (test)" in capsys.readouterr().out


def test_predict_reads_stdin(trained, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"Please let me \n")))
    assert (
        predict_main(
            ["--ckpt", str(trained["export"]), "--subject", "Hi", "--min-confidence", "0", "--budget-ms", "0"]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["reason"] in ("ok", "empty", "too_long_word", "gendered", "inconsistent")
    lines = b'{"text": "Thanks for the "}\n{"text": "Hel"}\n'
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(lines)))
    assert predict_main(["--ckpt", str(trained["export"]), "--jsonl"]) == 0
    outs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(outs) == 2 and outs[1]["reason"] == "too_short"


def test_memory_command_adds_the_memory_to_a_checkpoint_and_recalibrates(trained, tmp_path):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained["export"], ckpt)
    for name in ("memory.safetensors", "memory.json", CALIBRATION_FILE):
        (ckpt / name).unlink()
    argv = ["--config", str(ROOT / TINY), *trained["common"], "--ckpt", str(ckpt), "calibrate_emails=1"]
    assert memory_main(argv) == 0
    assert json.loads((ckpt / "memory.json").read_text())["fit_positions"] > 0
    assert 0.0 <= json.loads((ckpt / CALIBRATION_FILE).read_text())["min_confidence"] <= 1.0
    assert load_predictor(ckpt).backend.memory is not None
