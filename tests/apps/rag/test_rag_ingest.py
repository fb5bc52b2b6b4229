"""Ingest: Stack Exchange XML written here -> chunks with metadata; chunking; documents; bad input."""

from __future__ import annotations

import pytest
from rag_testdata import write_dump

from gensys.apps.rag.config import AclConfig, IngestConfig
from gensys.apps.rag.ingest import (
    Chunk,
    chunk_text,
    chunks_from_document,
    chunks_from_se_dump,
    groups_for,
    load_chunks,
    save_chunks,
    split_blocks,
)
from gensys.errors import DataError


def test_se_dump_ingest_carries_thread_metadata(corpus_chunks) -> None:
    by_id = {c.id: c for c in corpus_chunks}
    q = by_id["alpha.example.com/q/1#0"]
    a = by_id["alpha.example.com/a/2#0"]
    assert q.kind == "question" and a.kind == "answer"
    assert q.title == a.title == "How do I mint a native token with cardano-cli?"
    assert a.thread_id == q.thread_id == "alpha.example.com/q/1"
    assert a.tags == q.tags == ["minting", "cardano-cli"]
    assert a.accepted and not by_id["alpha.example.com/a/3#0"].accepted
    assert (a.score, by_id["alpha.example.com/a/3#0"].score) == (7, 1)
    assert a.url == "https://alpha.example.com/a/2" and q.url == "https://alpha.example.com/q/1"
    assert a.site == "alpha.example.com" and a.date == "2021-05-01T10:00:00.000"
    # HTML became text, the code block kept as a fence; the title travels with every chunk
    code = [c for c in corpus_chunks if c.post_id == "alpha.example.com/a/2" and "```" in c.text]
    assert code and "--minting-script-file policy.script" in code[0].text
    for c in corpus_chunks:
        assert c.embed_text().startswith(c.title + "\n")
    # ACL: site mapping, tag mapping, default
    assert q.groups == ["everyone"]
    assert by_id["beta.example.com/q/1#0"].groups == ["physics"]
    assert by_id["alpha.example.com/q/8#0"].groups == ["support"]
    assert len({c.id for c in corpus_chunks}) == len(corpus_chunks)


def test_comments_are_appended_only_when_asked(tmp_path) -> None:
    d = write_dump(tmp_path / "alpha.example.com", "alpha.example.com")  # site = folder name
    acl = AclConfig()
    plain = chunks_from_se_dump(d, IngestConfig(), acl)
    with_comments = chunks_from_se_dump(d, IngestConfig(comments=True), acl)
    text = {c.id: c.text for c in with_comments}
    assert "Good question" in text["alpha.example.com/q/1#0"]
    assert all("Good question" not in c.text for c in plain)


def test_chunking_respects_code_blocks_and_overlaps() -> None:
    para = "Sentence number {} explains one more detail of the setup. "
    text = "\n\n".join((para.format(i) * 3).strip() for i in range(8))
    code = "```\n" + "\n".join(f"line_{i} = compute({i})" for i in range(6)) + "\n\nafter_blank = 1\n```"
    text = text + "\n\n" + code + "\n\nClosing remark."
    assert code in split_blocks(text)  # a blank line inside a fence does not split it
    chunks = chunk_text(text, max_chars=400, overlap_chars=200)
    assert len(chunks) > 3
    assert all(len(c) <= 400 for c in chunks)
    assert any(code in c for c in chunks)  # the code block fits a chunk: it is never cut
    for prev, nxt in zip(chunks, chunks[1:]):  # overlap: the next chunk starts with the previous one's tail
        first = nxt.split("\n\n")[0]
        assert first in prev or first.startswith("```")
    # every paragraph survives
    for i in range(8):
        assert any(f"Sentence number {i} " in c for c in chunks)


def test_oversized_blocks_are_split_on_lines_and_sentences() -> None:
    code = "```\n" + "\n".join(f"x{i} = {i} * {i}" for i in range(200)) + "\n```"
    pieces = chunk_text(code, max_chars=300, overlap_chars=0)
    assert len(pieces) > 5 and all(len(p) <= 300 for p in pieces)
    assert all(p.startswith("```\n") and p.endswith("\n```") for p in pieces)  # each piece is re-fenced
    joined = "\n".join(p[4:-4] for p in pieces)
    assert joined == code[4:-4]
    prose = " ".join(f"Word{i} is here." for i in range(300))
    pieces = chunk_text(prose, max_chars=250, overlap_chars=0)
    assert all(len(p) <= 250 for p in pieces) and pieces[0].startswith("Word0 is here.")
    assert chunk_text("", 300, 0) == [] and chunk_text("\n\n  \n", 300, 0) == []


def test_groups_for_union_and_default() -> None:
    acl = AclConfig(default_groups=["staff"], site_groups={"s": ["a"]}, tag_groups={"t": ["b"], "u": ["a"]})
    assert groups_for("s", ["t"], acl) == ["a", "b"]
    assert groups_for("other", ["u"], acl) == ["a"]
    assert groups_for("other", ["none"], acl) == ["staff"]


def test_documents_markdown_html_text(tmp_path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "guide.md").write_text(
        "# Deploy Guide\n\nIntro text.\n\n## Rollback\n\nRun the rollback job.\n\n"
        "```\n# not a heading\nmake rollback\n```\n"
    )
    (docs / "faq.html").write_text(
        "<html><head><title>VPN FAQ</title><style>p{}</style></head><body><p>Use the corporate VPN.</p>"
        "<pre>vpn connect --corp</pre></body></html>"
    )
    (docs / "notes.txt").write_text("Plain note about printers.")
    cfg, acl = IngestConfig(docs_site="handbook"), AclConfig(site_groups={"handbook": ["employees"]})
    md = chunks_from_document(docs / "guide.md", cfg, acl, docs)
    assert [c.title for c in md] == ["Deploy Guide", "Deploy Guide › Rollback"]
    assert "# not a heading" in md[1].text and "make rollback" in md[1].text  # fenced '#' is not a heading
    assert {c.thread_id for c in md} == {"handbook/d/guide.md"} and md[0].groups == ["employees"]
    html = chunks_from_document(docs / "faq.html", cfg, acl, docs)
    assert (
        html[0].title == "VPN FAQ"
        and "```\nvpn connect --corp\n```" in html[0].text
        and "p{}" not in html[0].text
    )
    txt = chunks_from_document(docs / "notes.txt", cfg, acl, docs)
    assert txt[0].title == "notes" and txt[0].kind == "doc"
    with pytest.raises(DataError, match="unsupported document type"):
        (docs / "x.pdf").write_bytes(b"%PDF")
        chunks_from_document(docs / "x.pdf", cfg, acl)


def test_malformed_xml_is_a_clear_error(tmp_path) -> None:
    d = tmp_path / "broken.example.com"
    d.mkdir()
    (d / "Posts.xml").write_text('<posts>\n<row Id="1" PostTypeId="1" Title="t" Body="b" />\n<row Id="2" <\n')
    with pytest.raises(DataError, match=r"Posts.xml:3: malformed XML"):
        chunks_from_se_dump(d, IngestConfig(), AclConfig())
    with pytest.raises(DataError, match="Posts.xml is missing"):
        chunks_from_se_dump(tmp_path, IngestConfig(), AclConfig())


def test_chunks_file_round_trip(tmp_path, corpus_chunks) -> None:
    path = save_chunks(corpus_chunks, tmp_path / "chunks.jsonl.gz")
    assert load_chunks(path) == corpus_chunks
    (tmp_path / "bad.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(DataError, match="bad chunk record"):
        load_chunks(tmp_path / "bad.jsonl")
    dup = [corpus_chunks[0], Chunk(**corpus_chunks[0].to_dict())]
    save_chunks(dup, tmp_path / "dup.jsonl.gz")
    with pytest.raises(DataError, match="share the id"):
        load_chunks(tmp_path / "dup.jsonl.gz")
