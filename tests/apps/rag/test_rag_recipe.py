"""Recipes end to end on a tiny JSONL corpus (prepare -> index -> search/ask/predict -> eval), the predictor's
input checks and access control, incremental CLI updates, and every shipped config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rag_testdata import INJECTION, write_dump, write_jsonl_corpus

from gensys.apps.rag.config import Config, RagError
from gensys.apps.rag.predictor import load_predictor
from gensys.apps.rag.recipe import (
    ask_main,
    eval_main,
    index_main,
    predict_main,
    prepare_main,
    search_main,
    train_main,
)
from gensys.config import load_config

TINY = "configs/rag/tiny.yaml"


@pytest.fixture(scope="module")
def built(tmp_path_factory, cache_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rag")
    data = write_jsonl_corpus(root / "data")
    # one answer carries a prompt injection
    import gzip
    import html

    with gzip.open(data / "answers.jsonl.gz", "rt") as f:
        answers = [json.loads(x) for x in f]
    answers[0]["body_text"] = INJECTION + "\n\n" + answers[0]["body_text"]
    if answers[0].get("body_html"):  # ingest reads the HTML when a post has it
        answers[0]["body_html"] = f"<p>{html.escape(INJECTION)}</p>" + answers[0]["body_html"]
    with gzip.open(data / "answers.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(a) + "\n" for a in answers)
    common = [
        f"ingest.data_dir={data}",
        f"ingest.out={root}/chunks.jsonl.gz",
        f"index.dir={root}/index",
        f"embed.cache={cache_dir}",
        "acl.site_groups={beta.example.com: [physics]}",
    ]
    assert prepare_main(["--config", TINY, *common]) == 0
    assert index_main(["--config", TINY, "--chunks", f"{root}/chunks.jsonl.gz", *common]) == 0
    return {"root": root, "data": data, "index": root / "index", "common": common}


def test_index_folder_and_search_cli(built, capsys) -> None:
    idx = built["index"]
    info = json.loads((idx / "index.json").read_text())
    assert info["embedding"]["name"] == "sentence-transformers/all-MiniLM-L6-v2" and info["n_chunks"] > 8
    assert json.loads((idx / "config.json").read_text())["acl"]["site_groups"] == {
        "beta.example.com": ["physics"]
    }
    capsys.readouterr()
    assert search_main(["grover oracle qiskit", "--index", str(idx), "--groups", "physics", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits[0]["thread_id"] == "beta.example.com/q/3"
    assert {"id", "title", "url", "site", "snippet", "score"} <= set(hits[0])
    # without the physics group the beta site does not exist for the user
    assert (
        search_main(["grover oracle qiskit", "--index", str(idx), "--groups", "", "--json", "-k", "20"]) == 0
    )
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits and all(h["site"] == "alpha.example.com" for h in hits)
    assert search_main(["wallet", "--index", str(idx), "--tags", "wallet", "--method", "bm25"]) == 0
    assert "Restore a wallet" in capsys.readouterr().out


def test_ask_cli_and_predictor(built, capsys) -> None:
    idx = built["index"]
    assert ask_main(["How do I mint a native token?", "--index", str(idx), "--mode", "extractive"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\[\d\] .* — https://alpha.example.com/", out)
    pred = load_predictor(idx)
    r = pred.ask("How do I mint a native token?", user="ana", groups=[], mode="generative", k=3)
    assert (
        r["mode"] == "extractive" and "no chat model" in r["note"]
    )  # models/chat absent in this index's config
    retrieved = {h["id"] for h in r["retrieved"]}
    assert r["citations"] and {c["id"] for c in r["citations"]} <= retrieved
    assert {"id", "title", "url", "site", "snippet", "score"} <= set(r["citations"][0])
    assert all(h["site"] == "alpha.example.com" for h in r["retrieved"])  # ACL: implicit 'everyone' only


def test_injected_post_does_not_change_the_answer(built) -> None:
    pred = load_predictor(built["index"])
    r = pred.ask(
        "How do I mint a native token with cardano-cli?", user="ana", groups=[], mode="extractive", k=5
    )
    assert any(INJECTION[:30] in h["text"] for h in r["retrieved"])  # the poisoned post was retrieved ...
    assert r["answer"].startswith("From the most relevant posts:")  # ... and the format is unchanged
    for para in r["answer"].split("\n\n")[1:]:
        assert re.search(r" \[\d\]$", para)
    assert "[9]" not in r["answer"] and r["answer"].strip() != "HACKED"
    assert [c["n"] for c in r["citations"]] == [int(x) for x in re.findall(r"\[(\d+)\]", r["answer"])]


def test_bad_input_is_a_clear_error(built) -> None:
    pred = load_predictor(built["index"])
    ok = {"user": "ana", "groups": ["everyone"]}
    with pytest.raises(RagError, match="question is empty"):
        pred.ask("   ", **ok)
    with pytest.raises(RagError, match="question is 100000 characters long; the limit is 4000"):
        pred.ask("x" * 100_000, **ok)
    with pytest.raises(RagError, match="k must be"):
        pred.ask("wallet", k=0, **ok)
    with pytest.raises(RagError, match="groups must be a list"):
        pred.ask("wallet", user="ana", groups="everyone")
    with pytest.raises(RagError, match="mode must be"):
        pred.ask("wallet", mode="poetry", **ok)
    with pytest.raises(RagError, match="a user name is required"):
        pred.search("wallet", user="", groups=[])
    with pytest.raises(RagError, match="not a RAG index"):
        load_predictor(built["root"])


def test_generative_mode_with_a_chat_checkpoint(built, tiny_lm) -> None:
    pred = load_predictor(built["index"], chat_ckpt=str(tiny_lm), **{"answer.max_new_tokens": 8})
    assert pred.generative is not None
    r = pred.ask("How do I mint a native token?", user="ana", groups=[], mode="generative", k=2)
    assert r["mode"] in ("generative", "extractive")  # a random LM's uncited answer falls back
    assert {c["id"] for c in r["citations"]} <= {h["id"] for h in r["retrieved"]}
    assert pred.ask("wallet", user="ana", groups=[], mode="extractive")["mode"] == "extractive"


def test_predict_and_train(built, tmp_path, capsys) -> None:
    req = tmp_path / "req.jsonl"
    req.write_text(
        json.dumps({"question": "MQTT broker for sensors?", "groups": ["physics"], "mode": "extractive"})
    )
    capsys.readouterr()
    assert predict_main([str(req), "--index", str(built["index"])]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["retrieved"][0]["thread_id"] == "beta.example.com/q/5"
    assert train_main([]) == 0 and "no training step" in capsys.readouterr().out


def test_incremental_cli_updates(built, tmp_path, cache_dir, capsys) -> None:
    import shutil

    idx = tmp_path / "idx"
    shutil.copytree(built["index"], idx)
    n0 = json.loads((idx / "index.json").read_text())["n_chunks"]
    dump = write_dump(tmp_path / "gamma.example.com", "beta.example.com")  # the site is named by its folder
    args = ["--config", TINY, "--index", str(idx), f"embed.cache={cache_dir}"]
    assert index_main([*args, "--add", str(dump)]) == 0
    n1 = json.loads((idx / "index.json").read_text())["n_chunks"]
    assert n1 > n0 and "gamma.example.com" in json.loads((idx / "index.json").read_text())["sites"]
    assert index_main([*args, "--delete", "gamma.example.com/q/1"]) == 0  # a question: its whole thread
    assert json.loads((idx / "index.json").read_text())["n_chunks"] == n1 - 2
    with pytest.raises(RagError, match="no index"):
        index_main(["--config", TINY, "--index", str(tmp_path / "none"), "--delete", "x"])
    # re-running the full build reuses every vector: nothing is embedded again
    capsys.readouterr()
    assert index_main(["--config", TINY, *built["common"], f"index.dir={idx}"]) == 0
    assert "'embedded': 0" in capsys.readouterr().out


def test_eval_writes_table_and_png(built, tmp_path) -> None:
    out = tmp_path / "eval"
    assert eval_main(["--config", TINY, *built["common"], "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["n_queries"] == 4  # both ends of the two links
    for m in ("bm25", "dense", "hybrid"):
        assert set(res["methods"][m]) == {"recall@1", "recall@5", "mrr", "ndcg@10"}
        assert all(0.0 <= v <= 1.0 for v in res["methods"][m].values())
    assert res["methods"]["dense"]["recall@5"] > 0  # qubit coherence threads find each other
    assert res["latency_title"]["p50_ms"] > 0 and res["citations"]["citation_validity"] == 1.0
    assert (out / "retrieval.png").stat().st_size > 1000 and "| hybrid |" in (out / "results.md").read_text()


@pytest.mark.parametrize("path", sorted(Path("configs/rag").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path) -> None:
    cfg = load_config(Config, path)
    assert isinstance(cfg, Config) and cfg.embed.max_tokens <= 512
