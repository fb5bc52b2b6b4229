"""End to end on synthetic shapes: prepare -> train -> eval -> predict learns "a red circle above a blue
square" from images drawn in the test, and every shipped config loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from caption_synth import COLOURS, SHAPES, make_example
from PIL import Image

from gensys.apps.caption.config import Config
from gensys.apps.caption.predictor import load_predictor
from gensys.apps.caption.recipe import eval_main, predict_main, prepare_main, train_main
from gensys.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[3]
TINY = str(ROOT / "configs/caption/tiny.yaml")


@pytest.mark.parametrize("path", sorted((ROOT / "configs/caption").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(Config, path)
    assert cfg.model.image_size % (cfg.model.patch_size if cfg.model.encoder == "vit" else 1) == 0
    assert cfg.model.max_seq_len >= cfg.preprocess.max_caption_tokens + 2
    with pytest.raises(ConfigError, match="unknown key 'model.encodr'"):
        load_config(Config, path, ["model.encodr=vit"])


@pytest.mark.slow  # minutes on 2 cores: run with -m slow
def test_train_eval_predict_learn_synthetic_shapes(shapes_dir, tmp_path, capsys):
    common = ["--config", TINY, "--data-dir", str(shapes_dir), f"data.cache_dir={tmp_path / 'cache'}"]
    assert prepare_main(common) == 0
    prep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert prep["train_images"] == 256 and prep["dev_captions"] == 64
    run = tmp_path / "run"
    assert train_main([*common, f"train.out_dir={run}", "--export", str(tmp_path / "export")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 400 and summary["loss"] < 1.0  # ln(300) = 5.7 at the start
    export = tmp_path / "export"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in export.iterdir()}
    assert json.loads((export / "config.json").read_text())["weights_dtype"] == "float16"

    out = tmp_path / "eval"
    assert eval_main([*common, "--ckpt", str(export), "--out-dir", str(out)]) == 0
    report = json.loads((out / "export" / "metrics.json").read_text())
    assert report["images"] == 32 and report["metrics"]["cider_d"] > 1.0, report["metrics"]
    assert report["metrics"]["bleu_1"] > 0.6
    sweep = report["fairness"]["threshold_sweep"]  # no person words in shapes: the rule never fires
    assert len(sweep) > 3 and all(s["captions_changed_rate"] == 0 for s in sweep)
    assert {s["cider_d"] for s in sweep} == {round(report["metrics_after_fairness"]["cider_d"], 4)}
    pngs = sorted(out.glob("export/attention_*.png"))
    assert len(pngs) == 2 and Image.open(pngs[0]).size[0] > 100
    assert "| CIDEr-D |" in (out / "table.md").read_text()

    # Fresh images the model never saw: colours and shapes come out right most of the time.
    import random

    rng = random.Random(123)
    pred = load_predictor(export)
    hits = total = 0
    for _ in range(12):
        im, caps = make_example(rng)
        said = pred.caption([im], beam=3, n_best=1)[0][0]["caption"].lower()
        truth = set(caps[0].split()) & (set(COLOURS) | set(SHAPES))
        hits += len(truth & set(said.rstrip(".").split()))
        total += len(truth)
    assert hits / total > 0.7, (hits, total)

    im_path = tmp_path / "one.png"
    make_example(rng)[0].save(im_path)
    assert (
        predict_main(["--ckpt", str(export), "--images", str(im_path), "--out", str(tmp_path / "p.jsonl")])
        == 0
    )
    row = json.loads((tmp_path / "p.jsonl").read_text())
    assert row["image"] == str(im_path) and row["caption"][0].isupper() and row["caption"].endswith(".")
