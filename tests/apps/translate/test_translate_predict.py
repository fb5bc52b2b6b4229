"""`translate()` and `gensys translate predict`: order and count kept, empty lines, long lines, bad input."""

from __future__ import annotations

import gzip
import io
import sys

import pytest

from gensys.apps.translate.predictor import load_predictor
from gensys.apps.translate.recipe import predict_main
from gensys.errors import CheckpointError, DataError


@pytest.fixture(scope="module")
def translator(tiny_ckpt):
    return load_predictor(tiny_ckpt)


def _stdin(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_translate_keeps_order_count_and_empty_inputs(translator, tiny_pairs):
    sources = [tiny_pairs[3][0], "", tiny_pairs[0][0], "   ", tiny_pairs[7][0]]
    out = translator.translate(sources, beam=3)
    assert len(out) == len(sources)
    assert [o["translation"] for o in out] == [tiny_pairs[3][1], "", tiny_pairs[0][1], "", tiny_pairs[7][1]]
    assert out[1] == {"translation": "", "score": 0.0, "truncated": False}
    # Batching (sorted by length inside) does not change any result.
    alone = [translator.translate([s], beam=3)[0] for s in sources]
    assert [o["translation"] for o in alone] == [o["translation"] for o in out]
    assert [o["score"] for o in alone] == pytest.approx([o["score"] for o in out], abs=1e-4)


def test_long_input_is_truncated_with_a_warning(translator, tiny_pairs):
    long = " ".join(s for s, _ in tiny_pairs)  # far beyond the tiny model's max_len of 48 tokens
    assert len(translator.tokenizer.encode(long)) > translator.max_len
    with pytest.warns(UserWarning, match="longer than 47 tokens"):
        out = translator.translate([long, tiny_pairs[0][0]], beam=2)
    assert out[0]["truncated"] is True and out[1]["truncated"] is False
    assert out[1]["translation"] == tiny_pairs[0][1]


def test_translate_rejects_non_strings(translator):
    with pytest.raises(DataError):
        translator.translate("one string")  # type: ignore[arg-type]
    with pytest.raises(DataError):
        translator.translate([b"bytes"])  # type: ignore[list-item]


def test_predict_stdin_one_line_out_per_line_in(tiny_ckpt, tiny_pairs, translator, monkeypatch, capsys):
    lines = [tiny_pairs[5][0], "", tiny_pairs[2][0], "", "", tiny_pairs[9][0]]
    _stdin(monkeypatch, ("\n".join(lines) + "\n").encode())
    assert predict_main(["--ckpt", str(tiny_ckpt), "--beam", "2"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n")
    got = out[:-1].split("\n")
    assert got == [tiny_pairs[5][1], "", tiny_pairs[2][1], "", "", tiny_pairs[9][1]]


def test_predict_reads_gzip_input_and_warns_on_long_lines(tiny_ckpt, tiny_pairs, tmp_path, capsys):
    long = " ".join(s for s, _ in tiny_pairs)
    path = tmp_path / "in.en.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(f"{tiny_pairs[1][0]}\n{long}\n\n")
    out_path = tmp_path / "hyp.de"
    assert predict_main(["--ckpt", str(tiny_ckpt), "--input", str(path), "--output", str(out_path)]) == 0
    got = out_path.read_text(encoding="utf-8").split("\n")
    assert len(got) == 4 and got[3] == ""  # three lines in, three lines out
    assert got[0] == tiny_pairs[1][1] and got[1] != "" and got[2] == ""
    err = capsys.readouterr().err
    assert "warning: line 2 is longer than 47 tokens" in err


def test_predict_non_utf8_is_a_clear_error(tiny_ckpt, tmp_path, monkeypatch):
    _stdin(monkeypatch, b"A dog.\nbad \xff\xfe bytes\n")
    with pytest.raises(DataError, match=r"<stdin> line 2: invalid UTF-8"):
        predict_main(["--ckpt", str(tiny_ckpt)])
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xc3\x28\n")
    with pytest.raises(DataError, match="invalid UTF-8"):
        predict_main(["--ckpt", str(tiny_ckpt), "--input", str(bad)])


def test_predict_bad_checkpoint_and_beam(tmp_path, monkeypatch):
    _stdin(monkeypatch, b"A dog.\n")
    with pytest.raises(CheckpointError):
        predict_main(["--ckpt", str(tmp_path / "nope")])
    with pytest.raises(DataError, match="--beam"):
        predict_main(["--beam", "0"])
