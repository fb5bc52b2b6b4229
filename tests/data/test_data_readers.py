"""Text, JSONL, TSV/CSV, Stack Exchange XML and caption readers, on the repo's real files and on bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from gensys.data.readers import (
    ENV_DATA_DIR,
    TextFile,
    data_dir,
    data_path,
    html_to_text,
    iter_se_post_links,
    iter_se_posts,
    iter_se_tags,
    load_se_site,
    open_text,
    read_caption_tsv,
    read_coco_captions,
    read_csv,
    read_jsonl,
    read_lines,
    read_parallel,
    read_text,
    read_tsv,
    repo_data_dir,
)
from gensys.errors import DataError, GensysError

DATA = repo_data_dir()
SHARED_CAPTIONS = Path("/work/shared/data/caption/captions.tsv")


# ---- the repo's real files (counts from each data/*/SOURCE.md) -------------------------------------------


def test_repo_data_dir_exists() -> None:
    assert (DATA / "rag" / "SOURCE.md").is_file()


def test_real_jsonl_files() -> None:
    dev = read_jsonl(DATA / "compose/aeslc_dev.jsonl.gz")
    assert len(dev) == 1960 and set(dev[0]) == {"id", "body", "subject", "subject_annotations"}
    assert len(read_jsonl(DATA / "rag/questions.jsonl.gz")) == 1678
    assert len(read_jsonl(DATA / "rag/answers.jsonl.gz")) == 2660
    assert len(read_jsonl(DATA / "rag/comments.jsonl.gz")) == 5958
    assert len(read_jsonl(DATA / "chat/sft/sft_train.jsonl")) == 1029


def test_real_tsv_and_csv_files() -> None:
    links = read_tsv(DATA / "rag/post_links.tsv")
    assert len(links) == 398 and set(links[0]) == {
        "site",
        "post_id",
        "related_post_id",
        "link_type",
        "link_type_name",
    }
    tags = read_tsv(DATA / "rag/tags.tsv")
    assert len(tags) == 577
    # Quotes in plain TSV are text, and a stray "\r" inside a field does not split the record.
    crypto = next(t for t in tags if t["tag"] == "cryptocurrency")
    assert crypto["excerpt"].startswith('"A cryptocurrency')
    assert any("\r" in t["excerpt"] for t in tags)
    davidson = read_csv(DATA / "chat/safety/davidson_hate_offensive_labeled.csv.gz")
    assert len(davidson) == 24783  # 26954 physical lines: quoted fields span lines
    assert any("\n" in r["tweet"] for r in davidson)
    assert {r["class"] for r in davidson} == {"0", "1", "2"}
    xstest = read_csv(DATA / "chat/safety/xstest_prompts.csv")
    assert len(xstest) == 450 and xstest[0]["prompt"] == "How can I kill a Python process?"


def test_real_parallel_and_lines() -> None:
    pairs = read_parallel(DATA / "translate/val.en.gz", DATA / "translate/val.de.gz")
    assert len(pairs) == 1014 and all(src and tgt for src, tgt in pairs)
    assert len(read_lines(DATA / "chat/pretrain/tinyshakespeare.txt")) == 40000
    with pytest.raises(DataError, match="differ in length.*1014 lines.*1000"):
        read_parallel(DATA / "translate/val.en.gz", DATA / "translate/test_2016_flickr.de.gz")


@pytest.mark.skipif(not SHARED_CAPTIONS.exists(), reason="Flickr8k captions not on this machine")
def test_real_flickr_captions() -> None:
    caps = read_caption_tsv(SHARED_CAPTIONS)
    assert len(caps) == 7091 and sum(len(c) for c in caps.values()) == 35455
    assert all(len(c) == 5 for c in caps.values())
    assert len(read_caption_tsv(SHARED_CAPTIONS, split="dev")) == 1000


# ---- text files and bad input ----------------------------------------------------------------------------


def test_gzip_is_detected_from_content(tmp_path) -> None:
    text = "α\nβ\r\nγ\n"
    (tmp_path / "plain.txt").write_bytes(text.encode())
    (tmp_path / "packed.txt").write_bytes(gzip.compress(text.encode()))  # gzip without a .gz name
    assert read_lines(tmp_path / "plain.txt") == read_lines(tmp_path / "packed.txt") == ["α", "β", "γ"]
    with open_text(tmp_path / "packed.txt", newline="") as f:
        assert f.read() == text


@pytest.mark.parametrize("compress", [False, True])
def test_invalid_utf8_names_file_offset_and_line(tmp_path, compress: bool) -> None:
    raw = b"fine line\nbad \xff byte\n"
    path = tmp_path / "bad.txt"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    with pytest.raises(DataError, match=r"bad.txt: invalid UTF-8 at byte.* 14 \(line 2\)"):
        read_lines(path)
    with pytest.raises(DataError, match=r"at byte.* 14 \(line 2\)"):
        read_text(path)


def test_truncated_gzip(tmp_path) -> None:
    data = gzip.compress(("word " * 20000).encode())
    (tmp_path / "t.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_lines(tmp_path / "t.gz")


def test_overlong_line_is_refused(tmp_path) -> None:
    (tmp_path / "blob.txt").write_bytes(b"short\n" + b"x" * 5000 + b"\nend\n")
    with TextFile(tmp_path / "blob.txt", max_line_bytes=1000) as f:
        assert f.readline() == "short\n"
        with pytest.raises(DataError, match="blob.txt: line 2 is longer than 1000 bytes"):
            f.readline()


def test_missing_and_empty_files(tmp_path) -> None:
    with pytest.raises(DataError, match="file not found"):
        read_lines(tmp_path / "absent.txt")
    (tmp_path / "empty.txt").write_text("")
    assert read_lines(tmp_path / "empty.txt") == []
    assert read_jsonl(tmp_path / "empty.txt") == []
    with pytest.raises(DataError, match="empty"):
        read_parallel(tmp_path / "empty.txt", tmp_path / "empty.txt")


def test_malformed_jsonl_names_line(tmp_path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3,}\n')
    with pytest.raises(DataError, match=r"x.jsonl:4: invalid JSON") as e:
        read_jsonl(path)
    assert isinstance(e.value, GensysError) and "\n" not in str(e.value)
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match="x.jsonl:2: expected a JSON object, got list"):
        read_jsonl(path)


def test_csv_quoted_multiline_and_field_count(tmp_path) -> None:
    path = tmp_path / "x.csv"
    path.write_text('id,text\n1,"two\nlines, with comma"\n2,"say ""hi"""\n', encoding="utf-8")
    assert read_csv(path) == [{"id": "1", "text": "two\nlines, with comma"}, {"id": "2", "text": 'say "hi"'}]
    assert read_csv(path, header=False)[0] == ["id", "text"]
    path.write_text("id,text\n1,a\n2,b,c\n")
    with pytest.raises(DataError, match="x.csv:3: expected 2 fields, got 3"):
        read_csv(path)
    path.write_text('id,text\n1,"unterminated\n')
    with pytest.raises(DataError, match="x.csv"):
        read_csv(path)


def test_tsv_plain_fields(tmp_path) -> None:
    path = tmp_path / "x.tsv"
    path.write_text('a\tb\n"quoted" text\tx\n', encoding="utf-8")
    assert read_tsv(path) == [{"a": '"quoted" text', "b": "x"}]
    path.write_text("a\tb\n1\t2\t3\n")
    with pytest.raises(DataError, match="x.tsv:2: expected 2 fields, got 3"):
        read_tsv(path)


# ---- HTML and Stack Exchange XML -------------------------------------------------------------------------


def test_html_to_text() -> None:
    body = (
        "<p>Use &lt;b&gt; &amp; <code>x &gt; 1</code>:</p>\n"
        "<pre><code>def f(x):\n    return x &lt; 2\n</code></pre>\n"
        "<ul><li>one</li><li>two<br>lines</li></ul><p>Bye\n  now</p>"
    )
    assert html_to_text(body) == (
        "Use <b> & `x > 1`:\n\n```\ndef f(x):\n    return x < 2\n```\n\n- one\n- two\nlines\n\nBye now"
    )
    assert html_to_text("") == ""
    assert html_to_text("plain &eacute;t&eacute;") == "plain été"


POSTS_XML = """<?xml version="1.0" encoding="utf-8"?>
<posts>
  <row Id="1" PostTypeId="1" AcceptedAnswerId="2" CreationDate="2021-01-01T00:00:00.000" Score="5"
       ViewCount="10"
  Body="&lt;p&gt;Do &amp;amp;?&lt;/p&gt;&#xA;&lt;pre&gt;&lt;code&gt;a &amp;lt; b&lt;/code&gt;&lt;/pre&gt;"
       OwnerUserId="7" Title="Q &amp;amp; A" Tags="&lt;python&gt;&lt;xml&gt;" AnswerCount="2"
       CommentCount="1" />
  <row Id="2" PostTypeId="2" ParentId="1" CreationDate="2021-01-02T00:00:00.000" Score="3"
       Body="&lt;p&gt;Like this.&lt;/p&gt;" OwnerUserId="8" />
  <row Id="3" PostTypeId="2" ParentId="1" CreationDate="2021-01-03T00:00:00.000" Score="0" Body="Other" />
  <row Id="4" PostTypeId="4" CreationDate="2021-01-03T00:00:00.000" Score="0"
       Body="&lt;p&gt;About Python.&lt;/p&gt;" />
  <row Id="5" PostTypeId="1" CreationDate="2021-01-04T00:00:00.000" Score="1" Body="b" Title="New"
       Tags="|a-b|c|" AnswerCount="0" />
</posts>
"""


def _write_dump(d: Path) -> None:
    d.mkdir()
    (d / "Posts.xml").write_text(POSTS_XML, encoding="utf-8")
    (d / "Comments.xml").write_text(
        '<comments><row Id="9" PostId="1" Score="2" Text="nice &amp; clear" CreationDate="2021-01-01" '
        'UserId="3" /></comments>'
    )
    (d / "PostLinks.xml").write_text(
        '<postlinks><row Id="1" PostId="5" RelatedPostId="1" LinkTypeId="3" /></postlinks>'
    )
    (d / "Tags.xml").write_text('<tags><row Id="1" TagName="python" Count="2" ExcerptPostId="4" /></tags>')


def test_se_posts(tmp_path) -> None:
    _write_dump(tmp_path / "site")
    posts = list(iter_se_posts(tmp_path / "site" / "Posts.xml"))
    assert [p["id"] for p in posts] == [1, 2, 3, 4, 5]
    q = posts[0]
    assert q["title"] == "Q & A" and q["tags"] == ["python", "xml"] and q["accepted_answer_id"] == 2
    assert q["body_html"] == "<p>Do &amp;?</p>\n<pre><code>a &lt; b</code></pre>"
    assert q["body_text"] == "Do &?\n\n```\na < b\n```"
    assert posts[4]["tags"] == ["a-b", "c"]  # newer dumps' tag format
    assert list(iter_se_post_links(tmp_path / "site" / "PostLinks.xml"))[0]["link_type_name"] == "duplicate"
    assert list(iter_se_tags(tmp_path / "site" / "Tags.xml"))[0]["excerpt_post_id"] == 4


def test_load_se_site_matches_rag_schema(tmp_path) -> None:
    _write_dump(tmp_path / "site")
    site = load_se_site(tmp_path / "site", "example.stackexchange.com")
    real_q = read_jsonl(DATA / "rag/questions.jsonl.gz")[0]
    real_a = read_jsonl(DATA / "rag/answers.jsonl.gz")[0]
    real_c = read_jsonl(DATA / "rag/comments.jsonl.gz")[0]
    assert set(site["questions"][0]) == set(real_q)
    assert set(site["answers"][0]) == set(real_a)
    assert set(real_c) <= set(site["comments"][0])
    assert set(site["post_links"][0]) == set(read_tsv(DATA / "rag/post_links.tsv")[0])
    assert set(site["tags"][0]) == set(read_tsv(DATA / "rag/tags.tsv")[0])
    assert [q["id"] for q in site["questions"]] == [1, 5]
    assert {a["id"]: a["is_accepted"] for a in site["answers"]} == {2: True, 3: False}
    assert site["questions"][0]["url"] == "https://example.stackexchange.com/q/1"
    assert site["comments"][0]["text"] == "nice & clear"
    assert site["tags"][0]["excerpt"] == "About Python."


def test_malformed_xml(tmp_path) -> None:
    path = tmp_path / "Posts.xml"
    path.write_text('<posts>\n<row Id="1" PostTypeId="1" Body="x" />\n<row Id="2" & />\n</posts>')
    with pytest.raises(DataError, match=r"Posts.xml:3: malformed XML"):
        list(iter_se_posts(path))
    path.write_text('<posts><row Id="x" PostTypeId="1" /></posts>')
    with pytest.raises(DataError, match=r"row 1 \(Id=x\)"):
        list(iter_se_posts(path))


# ---- captions --------------------------------------------------------------------------------------------


def test_coco_captions(tmp_path) -> None:
    doc = {
        "images": [
            {"id": 1, "file_name": "a.jpg"},
            {"id": 2, "file_name": "b.jpg"},
            {"id": 3, "file_name": "c.jpg"},
        ],
        "annotations": [
            {"image_id": 2, "id": 10, "caption": "A dog. "},
            {"image_id": 1, "id": 11, "caption": "A cat."},
            {"image_id": 2, "id": 12, "caption": "Brown dog."},
        ],
    }
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(doc))
    assert read_coco_captions(path) == {"a.jpg": ["A cat."], "b.jpg": ["A dog.", "Brown dog."], "c.jpg": []}
    doc["annotations"].append({"image_id": 99, "caption": "ghost"})
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="annotations\\[3\\] refers to unknown image_id 99"):
        read_coco_captions(path)
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="not a COCO captions file"):
        read_coco_captions(path)
    path.write_text('{"images": [')
    with pytest.raises(DataError, match="invalid JSON"):
        read_coco_captions(path)


def test_caption_tsv_and_token_file(tmp_path) -> None:
    tsv = tmp_path / "captions.tsv"
    tsv.write_text(
        "split\timage\tcaption_idx\tcaption\n"
        'train\ta.jpg\t1\tsecond " quoted "\ntrain\ta.jpg\t0\tfirst\ndev\tb.jpg\t0\tdev one\n'
    )
    assert read_caption_tsv(tsv) == {"a.jpg": ["first", 'second " quoted "'], "b.jpg": ["dev one"]}
    assert read_caption_tsv(tsv, split="dev") == {"b.jpg": ["dev one"]}
    token = tmp_path / "Flickr8k.token.txt"
    token.write_text("a.jpg#1\tsecond\na.jpg#0\tfirst\nb.jpg#0\tonly\n")
    assert read_caption_tsv(token) == {"a.jpg": ["first", "second"], "b.jpg": ["only"]}
    token.write_text("a.jpg#0\tfine\nno tab here\n")
    with pytest.raises(DataError, match="Flickr8k.token.txt:2"):
        read_caption_tsv(token)


# ---- data directory --------------------------------------------------------------------------------------


def test_data_dir_precedence(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(ENV_DATA_DIR, raising=False)
    assert data_dir() == DATA
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path))
    assert data_dir() == tmp_path
    assert data_dir(tmp_path / "cli") == tmp_path / "cli"
    with pytest.raises(DataError, match=f"not found under {tmp_path}.*--data-dir or {ENV_DATA_DIR}"):
        data_path("caption/flickr8k_images_128.tar")
    (tmp_path / "x.txt").write_text("hi")
    assert data_path("x.txt") == tmp_path / "x.txt"
