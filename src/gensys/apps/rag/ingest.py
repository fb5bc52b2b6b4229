"""Ingest: Stack Exchange threads (dump XML or data/rag JSONL) and documents -> chunks with metadata.

A *post* (question, answer or document section) is cut into chunks on paragraph and code-block
boundaries, with a little overlap; the thread's title travels with every chunk (it is prepended to the
text that is embedded and BM25-indexed). Each chunk carries what retrieval, filtering, access control and
citations need: title, tags, score, accepted flag, URL, site, date and the groups allowed to read it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gensys.apps.rag.config import AclConfig, IngestConfig
from gensys.data.atomic import atomic_write
from gensys.data.readers import data_dir, html_to_text, iter_jsonl, load_se_site, read_text
from gensys.errors import DataError

DOC_SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html", ".txt": "text"}


@dataclass
class Chunk:
    """One retrievable unit: `id` is unique, `post_id` groups a post's chunks, `thread_id` a thread's."""

    id: str  # "<site>/<q|a|d>/<post>#<n>"
    post_id: str  # "<site>/<q|a|d>/<post>"
    thread_id: str  # the question's post_id (a document section: the document)
    kind: str  # question | answer | doc
    site: str
    title: str
    text: str
    tags: list[str] = field(default_factory=list)
    score: int = 0
    accepted: bool = False
    url: str = ""
    date: str = ""  # ISO 8601 creation date ("" = unknown)
    groups: list[str] = field(default_factory=list)

    def embed_text(self) -> str:
        """What the encoders see: the title travels with every chunk."""
        return f"{self.title}\n{self.text}" if self.title else self.text

    def text_hash(self) -> str:
        return hashlib.sha1(self.embed_text().encode("utf-8")).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Chunk:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = {"id", "post_id", "thread_id", "kind", "site", "title", "text"} - set(d)
        if missing:
            raise DataError(f"chunk record lacks {sorted(missing)}")
        return cls(**{k: v for k, v in d.items() if k in names})


# ---------------------------------------------------------------------------------------------------------
# chunking

_FENCE = re.compile(r"^\s*```")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9`\"'(\[])")


def split_blocks(text: str) -> list[str]:
    """Paragraphs and ``` code blocks of a text; blank lines inside a code block do not split it."""
    blocks: list[str] = []
    cur: list[str] = []
    in_code = False
    for line in text.split("\n"):
        if _FENCE.match(line):
            if not in_code and cur:  # a fence opens a new block
                blocks.append("\n".join(cur))
                cur = []
            cur.append(line)
            in_code = not in_code
            if not in_code:
                blocks.append("\n".join(cur))
                cur = []
            continue
        if not in_code and not line.strip():
            if cur:
                blocks.append("\n".join(cur))
                cur = []
            continue
        cur.append(line)
    if cur:
        blocks.append("\n".join(cur))
    return [b.strip("\n") for b in blocks if b.strip()]


def _hard_split(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _split_block(block: str, size: int) -> list[str]:
    """Pieces of one over-long block: code by lines (each piece re-fenced), prose by sentences."""
    if len(block) <= size:
        return [block]
    if _FENCE.match(block):
        lines = block.split("\n")
        body = lines[1:-1] if len(lines) > 1 and _FENCE.match(lines[-1]) else lines[1:]
        pieces, cur = [], []
        budget = size - 8  # room for the fences
        for line in body:
            for part in _hard_split(line, budget) or [""]:
                if cur and sum(len(x) + 1 for x in cur) + len(part) > budget:
                    pieces.append(cur)
                    cur = []
                cur.append(part)
        if cur:
            pieces.append(cur)
        return ["```\n" + "\n".join(p) + "\n```" for p in pieces]
    out: list[str] = []
    for sent in _SENTENCE_END.split(block):
        out.extend(_hard_split(sent, size) if len(sent) > size else [sent])
    return out


def chunk_text(text: str, max_chars: int, overlap_chars: int) -> list[str]:
    """Cut `text` into chunks of at most ~`max_chars`, on paragraph / code / sentence boundaries.

    Units (blocks, or pieces of over-long blocks) are packed greedily; each chunk after the first starts
    with the trailing units of the previous chunk that fit in `overlap_chars`, so a passage cut at a
    boundary is still seen whole by one of the two chunks.
    """
    units: list[str] = []
    for block in split_blocks(text):
        units.extend(_split_block(block, max_chars))
    if not units:
        return []
    chunks: list[str] = []
    cur: list[str] = []
    cur_len = 0
    for unit in units:
        if cur and cur_len + 2 + len(unit) > max_chars:
            chunks.append("\n\n".join(cur))
            carry: list[str] = []
            carried = 0
            for prev in reversed(cur):  # overlap: whole trailing units that fit
                if carried + len(prev) + 2 > overlap_chars:
                    break
                carry.insert(0, prev)
                carried += len(prev) + 2
            if carried + len(unit) > max_chars:
                carry, carried = [], 0
            cur, cur_len = carry, carried
        cur.append(unit)
        cur_len += len(unit) + 2
    chunks.append("\n\n".join(cur))
    return chunks


# ---------------------------------------------------------------------------------------------------------
# access control


def groups_for(site: str, tags: Iterable[str], acl: AclConfig) -> list[str]:
    """Groups allowed to read a chunk: the union of its site's and its tags' groups, else the default."""
    groups: set[str] = set(acl.site_groups.get(site, []))
    for t in tags:
        groups.update(acl.tag_groups.get(t, []))
    return sorted(groups) if groups else sorted(set(acl.default_groups))


# ---------------------------------------------------------------------------------------------------------
# Stack Exchange threads


def chunks_from_threads(
    questions: Iterable[dict[str, Any]],
    answers: Iterable[dict[str, Any]],
    cfg: IngestConfig,
    acl: AclConfig,
    comments: Iterable[dict[str, Any]] = (),
) -> list[Chunk]:
    """Chunks of Stack Exchange questions + answers (records with the data/rag schema)."""
    qs = {(q["site"], q["id"]): q for q in questions}
    by_post: dict[tuple[str, int], list[str]] = {}
    if cfg.comments:
        for c in comments:
            by_post.setdefault((c["site"], c["post_id"]), []).append(c["text"])
    out: list[Chunk] = []

    def add(kind: str, site: str, pid: int, q: dict[str, Any], rec: dict[str, Any], url: str) -> None:
        # From the HTML when there is some: html_to_text keeps <pre> blocks as ``` fences (the chunker's code
        # boundaries) and inline code in backticks; data/rag's body_text has the tags stripped.
        text = html_to_text(rec["body_html"]) if rec.get("body_html") else rec.get("body_text") or ""
        notes = by_post.get((site, pid))
        if notes:
            text += "\n\nComments:\n" + "\n".join(f"- {n}" for n in notes)
        post_id = f"{site}/{kind[0]}/{pid}"
        tags = list(q.get("tags") or [])
        pieces = chunk_text(text, cfg.chunk_chars, cfg.overlap_chars) or [""]
        for n, piece in enumerate(pieces):
            out.append(
                Chunk(
                    id=f"{post_id}#{n}",
                    post_id=post_id,
                    thread_id=f"{site}/q/{q['id']}",
                    kind=kind,
                    site=site,
                    title=q.get("title") or "",
                    text=piece,
                    tags=tags,
                    score=int(rec.get("score") or 0),
                    accepted=bool(rec.get("is_accepted", False)),
                    url=url,
                    date=rec.get("creation_date") or "",
                    groups=groups_for(site, tags, acl),
                )
            )

    for (site, qid), q in qs.items():
        add("question", site, qid, q, q, q.get("url") or f"https://{site}/q/{qid}")
    for a in answers:
        q = qs.get((a["site"], a["question_id"]))
        if q is None:  # an answer whose question is not in the corpus (e.g. filtered by site)
            continue
        add("answer", a["site"], a["id"], q, a, f"https://{a['site']}/a/{a['id']}")
    return out


def load_jsonl_corpus(folder: str | Path, sites: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The data/rag JSONL corpus: {"questions", "answers", "comments"} (optionally only some sites)."""
    folder = Path(folder)
    out: dict[str, list[dict[str, Any]]] = {}
    for name in ("questions", "answers", "comments"):
        path = folder / f"{name}.jsonl.gz"
        if not path.exists():
            path = folder / f"{name}.jsonl"
        if not path.exists():
            if name == "comments":
                out[name] = []
                continue
            raise DataError(f"{folder}: {name}.jsonl.gz not found (set ingest.data_dir or --data-dir)")
        out[name] = [r for r in iter_jsonl(path) if not sites or r.get("site") in sites]
    return out


# ---------------------------------------------------------------------------------------------------------
# documents


def _markdown_sections(text: str, default_title: str) -> tuple[str, list[tuple[str, str]]]:
    """(document title, [(section heading, section text)]) of a Markdown file; code fences are kept."""
    title = default_title
    sections: list[tuple[str, list[str]]] = [("", [])]
    in_code = False
    for line in text.split("\n"):
        if _FENCE.match(line):
            in_code = not in_code
        m = None if in_code else re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if m:
            heading = m.group(2).strip()
            if len(m.group(1)) == 1 and title == default_title:
                title = heading
            sections.append((heading, []))
        else:
            sections[-1][1].append(line)
    return title, [(h, "\n".join(lines).strip()) for h, lines in sections if "\n".join(lines).strip()]


def chunks_from_document(
    path: str | Path, cfg: IngestConfig, acl: AclConfig, root: Path | None = None
) -> list[Chunk]:
    """Chunks of one Markdown / HTML / plain-text document (sections become posts of one thread)."""
    path = Path(path)
    kind = DOC_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported document type (expected {', '.join(sorted(DOC_SUFFIXES))})")
    raw = read_text(path)
    stem = path.stem.replace("_", " ").replace("-", " ")
    if kind == "markdown":
        title, sections = _markdown_sections(raw, stem)
    elif kind == "html":
        m = re.search(r"<title[^>]*>(.*?)</title>", raw, re.I | re.S) or re.search(
            r"<h1[^>]*>(.*?)</h1>", raw, re.I | re.S
        )
        title = html_to_text(m.group(1)).strip() if m else stem
        body = re.sub(r"<(script|style|head)\b.*?</\1>", " ", raw, flags=re.I | re.S)
        sections = [("", html_to_text(body))]
    else:
        title, sections = stem, [("", raw)]
    rel = path.relative_to(root).as_posix() if root is not None else path.name
    site = cfg.docs_site
    doc_id = f"{site}/d/{rel}"
    groups = groups_for(site, [], acl)
    out: list[Chunk] = []
    for s, (heading, text) in enumerate(sections):
        full_title = f"{title} › {heading}" if heading and heading != title else title
        for n, piece in enumerate(chunk_text(text, cfg.chunk_chars, cfg.overlap_chars)):
            out.append(
                Chunk(
                    id=f"{doc_id}§{s}#{n}",
                    post_id=f"{doc_id}§{s}",
                    thread_id=doc_id,
                    kind="doc",
                    site=site,
                    title=full_title,
                    text=piece,
                    url=path.resolve().as_uri(),
                    groups=groups,
                )
            )
    return out


def iter_document_paths(paths: Iterable[str | Path]) -> Iterator[tuple[Path, Path | None]]:
    """(file, root folder or None) for files and folders of supported documents, sorted."""
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in DOC_SUFFIXES:
                    yield f, p
        elif p.is_file():
            yield p, None
        else:
            raise DataError(f"document path not found: {p}")


# ---------------------------------------------------------------------------------------------------------
# the whole corpus


def build_chunks(cfg: IngestConfig, acl: AclConfig, data_dir_override: str | None = None) -> list[Chunk]:
    """All chunks the config names: the JSONL corpus, extra SE dumps and documents."""
    folder = Path(cfg.data_dir) if cfg.data_dir else data_dir(data_dir_override) / "rag"
    corpus = load_jsonl_corpus(folder, cfg.sites or None)
    chunks = chunks_from_threads(corpus["questions"], corpus["answers"], cfg, acl, corpus["comments"])
    for dump in cfg.se_dumps:
        chunks.extend(chunks_from_se_dump(dump, cfg, acl))
    for f, root in iter_document_paths(cfg.docs):
        chunks.extend(chunks_from_document(f, cfg, acl, root))
    check_unique(chunks)
    return chunks


def chunks_from_se_dump(
    dump_dir: str | Path, cfg: IngestConfig, acl: AclConfig, site: str = ""
) -> list[Chunk]:
    """Chunks of an extracted Stack Exchange dump folder; the site name defaults to the folder name."""
    dump_dir = Path(dump_dir)
    if not (dump_dir / "Posts.xml").is_file():
        raise DataError(f"{dump_dir}: not a Stack Exchange dump folder (Posts.xml is missing)")
    data = load_se_site(dump_dir, site or dump_dir.name)
    return chunks_from_threads(data["questions"], data["answers"], cfg, acl, data["comments"])


def check_unique(chunks: list[Chunk]) -> None:
    seen: set[str] = set()
    for c in chunks:
        if c.id in seen:
            raise DataError(f"two chunks share the id {c.id!r} (the same post ingested twice?)")
        seen.add(c.id)


def save_chunks(chunks: list[Chunk], path: str | Path) -> Path:
    """Write chunks as gzipped JSONL (atomically)."""
    import gzip

    def write(tmp: Path) -> None:
        with gzip.open(tmp, "wt", encoding="utf-8") as f:
            for c in chunks:
                f.write(json.dumps(c.to_dict(), ensure_ascii=False) + "\n")

    return atomic_write(path, write)


def load_chunks(path: str | Path) -> list[Chunk]:
    """Chunks written by `save_chunks` (or any JSONL of chunk records)."""
    out = []
    for rec in iter_jsonl(path):
        try:
            out.append(Chunk.from_dict(rec))
        except (TypeError, DataError) as e:
            raise DataError(f"{path}: bad chunk record {rec.get('id', '?')!r} ({e})") from None
    check_unique(out)
    return out
