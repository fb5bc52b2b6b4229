"""`gensys metrics NAME --hyp FILE --ref FILE...`: JSON on stdout, one-line errors and exit code 2."""

from __future__ import annotations

import json

import pytest
import sacrebleu
from metrics_testdata import perturb

from gensys.metrics import cider_d, coco_tokenize
from gensys.metrics.cli import metrics_main


def _write(path, lines: list[str]) -> str:
    path.write_text("".join(s + "\n" for s in lines), encoding="utf-8")
    return str(path)


def test_bleu_json_equals_sacrebleu(tmp_path, capsys, multi30k) -> None:
    refs = multi30k["test"][:200]
    hyps = perturb(refs)
    h, r = _write(tmp_path / "h.txt", hyps), _write(tmp_path / "r.txt", refs)
    assert metrics_main(["bleu", "--hyp", h, "--ref", r]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["name"] == "BLEU"
    assert out["score"] == sacrebleu.corpus_bleu(hyps, [refs]).score
    assert out["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")


def test_cider_d_and_rouge_from_files(tmp_path, capsys, caption_sets) -> None:
    hyps, refs = caption_sets[0][:100], caption_sets[1][:100]
    h = _write(tmp_path / "h.txt", hyps)
    r = [_write(tmp_path / f"r{k}.txt", [rs[k] if k < len(rs) else "" for rs in refs]) for k in range(4)]
    assert metrics_main(["cider-d", "--hyp", h, *sum((["--ref", x] for x in r), []), "--per-segment"]) == 0
    out = json.loads(capsys.readouterr().out)
    expect = cider_d([coco_tokenize(x) for x in hyps], [[coco_tokenize(x) for x in rs] for rs in refs])
    assert out["score"] == pytest.approx(expect.score, rel=1e-12) and out["tokenize"] == "coco"
    assert len(out["segments"]) == 100
    assert metrics_main(["rouge", "--hyp", h, "--ref", r[0]]) == 0
    names = [o["name"] for o in json.loads(capsys.readouterr().out)]
    assert names == ["rouge1", "rouge2", "rougeL", "rougeLsum"]


@pytest.mark.parametrize(
    "case, message",
    [
        ("mismatch", "has 2 lines but"),
        ("utf8", "not valid UTF-8 (byte 0xff at column 3)"),
        ("missing", "cannot read"),
        ("empty_refs", "empty reference set"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case: str, message: str) -> None:
    h = _write(tmp_path / "h.txt", ["a cat", "a dog"])
    r = _write(tmp_path / "r.txt", ["a cat", "a dog"])
    if case == "mismatch":
        r = _write(tmp_path / "r.txt", ["a cat", "a dog", "a cow"])
    elif case == "utf8":
        (tmp_path / "r.txt").write_bytes(b"a cat\nab\xffc\n")
    elif case == "missing":
        r = str(tmp_path / "nope.txt")
    elif case == "empty_refs":
        r = _write(tmp_path / "r.txt", ["a cat", ""])
    assert metrics_main(["chrf", "--hyp", h, "--ref", r]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_help_shows_defaults(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        metrics_main(["--help"])
    assert e.value.code == 0
    assert "(default: 3)" in capsys.readouterr().out
