"""Readers for the real source formats, so each system can be pointed at the user's own data.

Text: `open_text` (transparent gzip, strict UTF-8), `read_lines`, `read_jsonl`, `read_tsv`, `read_csv`,
`read_parallel`. Stack Exchange dumps: `iter_se_posts`, `iter_se_comments`, `iter_se_post_links`,
`iter_se_tags`, `load_se_site` (same record schema as data/rag), `html_to_text`. Captions:
`read_coco_captions`, `read_caption_tsv`. Images: `ImageSource` (a folder or a tar). Paths: `data_dir`,
`data_path`.

Every malformed input raises `DataError` naming the file and the line (or byte offset / member) at fault.
"""

from __future__ import annotations

import csv
import gzip
import html
import io
import json
import os
import re
import tarfile
import threading
import warnings
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from gensys.errors import DataError

PathLike = str | os.PathLike

ENV_DATA_DIR = "GENSYS_DATA"
MAX_LINE_BYTES = 64 * 1024 * 1024  # a longer "line" is almost surely a binary file passed as text
DEFAULT_MAX_PIXELS = 40_000_000
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


# ---------------------------------------------------------------------------------------------------------
# data directory


def repo_data_dir() -> Path:
    """The `data/` folder of a source checkout (src/gensys/data/readers.py -> <repo>/data)."""
    return Path(__file__).resolve().parents[3] / "data"


def data_dir(cli_value: PathLike | None = None) -> Path:
    """Where data lives: `--data-dir` value > env `GENSYS_DATA` > the repo's `data/` folder."""
    if cli_value:
        return Path(cli_value).expanduser()
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    return repo_data_dir()


def data_path(relative: PathLike, cli_value: PathLike | None = None) -> Path:
    """`data_dir(cli_value) / relative`, with a clear error saying how to point gensys elsewhere."""
    root = data_dir(cli_value)
    path = root / relative
    if not path.exists():
        raise DataError(f"{relative} not found under {root} (set --data-dir or {ENV_DATA_DIR})")
    return path


# ---------------------------------------------------------------------------------------------------------
# text


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(2) == b"\x1f\x8b"


class TextFile:
    """A read-only UTF-8 text file (plain or gzip) whose decode errors name the file and byte offset.

    Iterating yields lines with their line ending, as a text-mode file does; `newline=""` keeps "\\r\\n",
    the default turns it into "\\n". Offsets of a gzip file count bytes of the decompressed text.
    """

    def __init__(self, path: PathLike, newline: str | None = None, max_line_bytes: int = MAX_LINE_BYTES):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"file not found: {self.path}")
        self.gzipped = _is_gzip(self.path)
        # The handle lives as long as this object (closed by close() / __exit__).
        self._raw: IO[bytes] = gzip.open(self.path, "rb") if self.gzipped else self.path.open("rb")  # noqa: SIM115
        self._translate = newline is None
        self._max = max_line_bytes
        self.offset = 0  # bytes consumed so far
        self.lineno = 0  # lines consumed so far

    def _read_raw(self, n: int = -1, line: bool = False) -> bytes:
        try:
            return self._raw.readline(n) if line else self._raw.read(n)
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise DataError(f"{self.path}: corrupt or truncated gzip data ({e})") from None

    def _decode(self, data: bytes) -> str:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            where = "byte" if not self.gzipped else "byte (decompressed)"
            line = self.lineno + 1 + data.count(b"\n", 0, e.start)
            raise DataError(
                f"{self.path}: invalid UTF-8 at {where} {self.offset + e.start} (line {line}): "
                f"{data[e.start : e.start + 4]!r}"
            ) from None
        return text.replace("\r\n", "\n") if self._translate else text

    def readline(self) -> str:
        data = self._read_raw(self._max + 1, line=True)
        if len(data) > self._max:
            raise DataError(f"{self.path}: line {self.lineno + 1} is longer than {self._max} bytes")
        text = self._decode(data)
        self.offset += len(data)
        self.lineno += 1 if data else 0
        return text

    def read(self) -> str:
        data = self._read_raw()
        text = self._decode(data)
        self.offset += len(data)
        self.lineno += data.count(b"\n")
        return text

    def __iter__(self) -> Iterator[str]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> TextFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_text(path: PathLike, newline: str | None = None) -> TextFile:
    """Open a UTF-8 text file for reading; gzip is detected from the content, not the name."""
    return TextFile(path, newline=newline)


def read_text(path: PathLike) -> str:
    """The whole text of a (possibly gzipped) UTF-8 file."""
    with open_text(path) as f:
        return f.read()


def iter_lines(path: PathLike) -> Iterator[str]:
    """Lines of a text file without their line endings."""
    with open_text(path) as f:
        for line in f:
            yield line.rstrip("\n")


def read_lines(path: PathLike) -> list[str]:
    """All lines of a text file without their line endings."""
    return list(iter_lines(path))


def iter_jsonl(path: PathLike) -> Iterator[dict[str, Any]]:
    """JSON objects of a JSONL file (blank lines skipped); a bad line raises `DataError` naming file:line."""
    with open_text(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{f.path}:{f.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{f.path}:{f.lineno}: expected a JSON object, got {type(obj).__name__}")
            yield obj


def read_jsonl(path: PathLike) -> list[dict[str, Any]]:
    """All JSON objects of a JSONL file (plain or gzip)."""
    return list(iter_jsonl(path))


def read_json(path: PathLike) -> Any:
    """A JSON document (plain or gzip) with a clear error on malformed input."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None


def _plain_rows(f: TextFile) -> Iterator[tuple[int, list[str]]]:
    # Plain TSV: one record per line, fields split on tabs; a stray "\r" inside a field stays text.
    for line in f:
        line = line.rstrip("\n")
        if line:
            yield f.lineno, line.split("\t")


def _quoted_rows(f: TextFile, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    reader = csv.reader(f, delimiter=delimiter, strict=True)
    try:
        for row in reader:
            if row:
                yield reader.line_num, row
    except csv.Error as e:
        raise DataError(f"{f.path}:{reader.line_num}: malformed CSV ({e})") from None


def _read_delimited(path: PathLike, delimiter: str, header: bool, quoted: bool) -> Iterator[Any]:
    # csv wants the raw line endings (newline="") to parse quoted fields that span lines.
    with open_text(path, newline="" if quoted else None) as f:
        rows = _quoted_rows(f, delimiter) if quoted else _plain_rows(f)
        names: list[str] | None = None
        for line_num, row in rows:
            if header and names is None:
                names = row
            elif names is None:
                yield row
            elif len(row) != len(names):
                raise DataError(f"{path}:{line_num}: expected {len(names)} fields, got {len(row)}")
            else:
                yield dict(zip(names, row))


def iter_csv(path: PathLike, header: bool = True) -> Iterator[Any]:
    """Rows of a CSV file (quoted fields may span lines): dicts keyed by the header, or lists."""
    return _read_delimited(path, ",", header, quoted=True)


def read_csv(path: PathLike, header: bool = True) -> list[Any]:
    """All rows of a CSV file (plain or gzip); see `iter_csv`."""
    return list(iter_csv(path, header))


def iter_tsv(path: PathLike, header: bool = True, quoted: bool = False) -> Iterator[Any]:
    """Rows of a TSV file. Fields are plain (quotes are text) unless `quoted=True` (CSV-style quoting)."""
    return _read_delimited(path, "\t", header, quoted)


def read_tsv(path: PathLike, header: bool = True, quoted: bool = False) -> list[Any]:
    """All rows of a TSV file (plain or gzip); see `iter_tsv`."""
    return list(iter_tsv(path, header, quoted))


def read_parallel(src_path: PathLike, tgt_path: PathLike) -> list[tuple[str, str]]:
    """Sentence pairs from two line-aligned files; unequal or zero line counts are an error."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(
            f"parallel files differ in length: {src_path} has {len(src)} lines, {tgt_path} {len(tgt)}"
        )
    if not src:
        raise DataError(f"parallel files {src_path} and {tgt_path} are empty")
    return list(zip(src, tgt))


# ---------------------------------------------------------------------------------------------------------
# HTML -> text


class _HTMLToText(HTMLParser):
    _BLOCK = {
        "p",
        "div",
        "blockquote",
        "ul",
        "ol",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "table",
        "tr",
        "hr",
        "dl",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[str, str]] = []  # (kind, text); kind "li" blocks join with one newline
        self.buf: list[str] = []
        self.pre: list[str] | None = None
        self.in_li = False

    def flush(self) -> None:
        text = "".join(self.buf)
        self.buf = []
        lines = [re.sub(r"[ \t]+", " ", ln).strip() for ln in text.split("\n")]
        text = "\n".join(ln for ln in lines if ln)
        if text:
            self.blocks.append(("li" if self.in_li else "p", ("- " + text) if self.in_li else text))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.pre is not None:
            return
        if tag == "pre":
            self.flush()
            self.pre = []
        elif tag in self._BLOCK:
            self.flush()
        elif tag == "li":
            self.flush()
            self.in_li = True
        elif tag == "br":
            self.buf.append("\n")
        elif tag == "code":
            self.buf.append("`")
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self.buf.append(alt)
        elif tag in ("td", "th"):
            self.buf.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if self.pre is not None:
            if tag == "pre":
                code = "".join(self.pre).strip("\n")
                self.blocks.append(("pre", f"```\n{code}\n```"))
                self.pre = None
            return
        if tag in self._BLOCK:
            self.flush()
        elif tag == "li":
            self.flush()
            self.in_li = False
        elif tag == "code":
            self.buf.append("`")

    def handle_data(self, data: str) -> None:
        if self.pre is not None:
            self.pre.append(data)
        else:
            self.buf.append(re.sub(r"\s+", " ", data))

    def text(self) -> str:
        self.close()
        if self.pre is not None:  # unclosed <pre>: keep what we have
            self.blocks.append(("pre", "```\n" + "".join(self.pre).strip("\n") + "\n```"))
            self.pre = None
        self.flush()
        out: list[str] = []
        prev = ""
        for kind, text in self.blocks:
            if out:
                out.append("\n" if kind == prev == "li" else "\n\n")
            out.append(text)
            prev = kind
        return "".join(out)


def html_to_text(body: str) -> str:
    """Plain text of an HTML post body: paragraphs separated by blank lines, `<pre>` blocks as ``` fences,
    inline `<code>` in backticks, list items as "- ", entities decoded."""
    parser = _HTMLToText()
    parser.feed(body)
    return parser.text()


# ---------------------------------------------------------------------------------------------------------
# Stack Exchange dumps (Posts.xml, Comments.xml, PostLinks.xml, Tags.xml)


def iter_se_rows(path: PathLike) -> Iterator[dict[str, str]]:
    """Attribute dicts of the `<row .../>` elements of a Stack Exchange dump file (plain or gzip), streamed.

    The official dumps ship as .7z archives: extract them first (e.g. `7z x site.7z`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    opener = gzip.open if _is_gzip(path) else open
    with opener(path, "rb") as f:
        try:
            root = None
            for event, elem in ET.iterparse(f, events=("start", "end")):
                if event == "start":
                    if root is None:
                        root = elem
                    continue
                if elem.tag == "row":
                    yield dict(elem.attrib)
                    # Drop the parsed row so memory stays flat on multi-GB dumps.
                    elem.clear()
                    if root is not None:
                        root.clear()
        except ET.ParseError as e:
            line, col = e.position
            raise DataError(f"{path}:{line}: malformed XML (column {col}: {str(e).split(':')[0]})") from None
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: unreadable ({e})") from None


def _int(row: dict[str, str], key: str) -> int | None:
    value = row.get(key)
    return int(value) if value not in (None, "") else None


def _se_tags(value: str | None) -> list[str]:
    # Older dumps write "<a><b>", newer ones "|a|b|".
    if not value:
        return []
    if value.startswith("<"):
        return re.findall(r"<([^<>]+)>", value)
    return [t for t in value.split("|") if t]


def _typed(path: Path, rows: Iterator[dict[str, str]], convert: Any) -> Iterator[dict[str, Any]]:
    for i, row in enumerate(rows, 1):
        try:
            yield convert(row)
        except (KeyError, ValueError) as e:
            raise DataError(f"{path}: row {i} (Id={row.get('Id')}): missing or bad attribute {e}") from None


def iter_se_posts(path: PathLike) -> Iterator[dict[str, Any]]:
    """Posts of a Posts.xml: typed fields, `tags` as a list, `body_html` and `body_text` (`html_to_text`)."""

    def convert(r: dict[str, str]) -> dict[str, Any]:
        body = r.get("Body", "")
        return {
            "id": int(r["Id"]),
            "post_type_id": int(r["PostTypeId"]),
            "parent_id": _int(r, "ParentId"),
            "accepted_answer_id": _int(r, "AcceptedAnswerId"),
            "title": html.unescape(r.get("Title", "")),
            "body_html": body,
            "body_text": html_to_text(body),
            "tags": _se_tags(r.get("Tags")),
            "score": _int(r, "Score") or 0,
            "view_count": _int(r, "ViewCount"),
            "answer_count": _int(r, "AnswerCount"),
            "comment_count": _int(r, "CommentCount"),
            "creation_date": r.get("CreationDate"),
            "closed_date": r.get("ClosedDate"),
            "owner_user_id": _int(r, "OwnerUserId"),
            "content_license": r.get("ContentLicense"),
        }

    return _typed(Path(path), iter_se_rows(path), convert)


def iter_se_comments(path: PathLike) -> Iterator[dict[str, Any]]:
    """Comments of a Comments.xml (comment text is plain text in the dumps)."""

    def convert(r: dict[str, str]) -> dict[str, Any]:
        return {
            "id": int(r["Id"]),
            "post_id": int(r["PostId"]),
            "text": r.get("Text", ""),
            "score": _int(r, "Score") or 0,
            "creation_date": r.get("CreationDate"),
            "user_id": _int(r, "UserId"),
        }

    return _typed(Path(path), iter_se_rows(path), convert)


SE_LINK_TYPES = {1: "linked", 3: "duplicate"}


def iter_se_post_links(path: PathLike) -> Iterator[dict[str, Any]]:
    """Links of a PostLinks.xml (`link_type` 1 = linked, 3 = duplicate)."""

    def convert(r: dict[str, str]) -> dict[str, Any]:
        link_type = int(r["LinkTypeId"])
        return {
            "id": int(r["Id"]),
            "post_id": int(r["PostId"]),
            "related_post_id": int(r["RelatedPostId"]),
            "link_type": link_type,
            "link_type_name": SE_LINK_TYPES.get(link_type, str(link_type)),
        }

    return _typed(Path(path), iter_se_rows(path), convert)


def iter_se_tags(path: PathLike) -> Iterator[dict[str, Any]]:
    """Tags of a Tags.xml (`excerpt_post_id` points at the tag-wiki excerpt post)."""

    def convert(r: dict[str, str]) -> dict[str, Any]:
        return {
            "id": int(r["Id"]),
            "tag": r["TagName"],
            "count": _int(r, "Count") or 0,
            "excerpt_post_id": _int(r, "ExcerptPostId"),
        }

    return _typed(Path(path), iter_se_rows(path), convert)


def load_se_site(dump_dir: PathLike, site: str) -> dict[str, list[dict[str, Any]]]:
    """A Stack Exchange site dump folder -> {"questions", "answers", "comments", "post_links", "tags"} with
    the record fields of data/rag (see its SOURCE.md). Posts.xml is required, the other files are optional."""
    d = Path(dump_dir)
    questions: list[dict[str, Any]] = []
    answers: list[dict[str, Any]] = []
    excerpts: dict[int, str] = {}
    for p in iter_se_posts(d / "Posts.xml"):
        if p["post_type_id"] == 1:
            questions.append(
                {
                    "site": site,
                    "id": p["id"],
                    "url": f"https://{site}/q/{p['id']}",
                    **{k: p[k] for k in ("title", "body_text", "body_html", "tags", "score", "view_count")},
                    "answer_count": p["answer_count"] or 0,
                    **{
                        k: p[k]
                        for k in ("accepted_answer_id", "creation_date", "closed_date", "owner_user_id")
                    },
                }
            )
        elif p["post_type_id"] == 2:
            answers.append(
                {
                    "site": site,
                    "id": p["id"],
                    "question_id": p["parent_id"],
                    **{
                        k: p[k] for k in ("body_text", "body_html", "score", "creation_date", "owner_user_id")
                    },
                }
            )
        elif p["post_type_id"] == 4:  # tag-wiki excerpt
            excerpts[p["id"]] = p["body_text"]
    accepted = {q["accepted_answer_id"] for q in questions if q["accepted_answer_id"] is not None}
    for a in answers:
        a["is_accepted"] = a["id"] in accepted
    out: dict[str, list[dict[str, Any]]] = {"questions": questions, "answers": answers}
    out["comments"], out["post_links"], out["tags"] = [], [], []
    if (d / "Comments.xml").exists():
        out["comments"] = [{"site": site, **c} for c in iter_se_comments(d / "Comments.xml")]
    if (d / "PostLinks.xml").exists():
        for link in iter_se_post_links(d / "PostLinks.xml"):
            link.pop("id")
            out["post_links"].append({"site": site, **link})
    if (d / "Tags.xml").exists():
        for t in iter_se_tags(d / "Tags.xml"):
            excerpt = excerpts.get(t["excerpt_post_id"], "") if t["excerpt_post_id"] is not None else ""
            out["tags"].append({"site": site, "tag": t["tag"], "count": t["count"], "excerpt": excerpt})
    return out


# ---------------------------------------------------------------------------------------------------------
# captions


def read_coco_captions(path: PathLike) -> dict[str, list[str]]:
    """COCO-style captions JSON (`images[{id, file_name}]`, `annotations[{image_id, caption}]`) ->
    {file_name: [captions]} for every listed image (in file order; an image may have no captions)."""
    doc = read_json(path)
    if not isinstance(doc, dict) or "images" not in doc or "annotations" not in doc:
        raise DataError(f"{path}: not a COCO captions file (needs top-level 'images' and 'annotations')")
    by_id: dict[Any, str] = {}
    out: dict[str, list[str]] = {}
    for i, im in enumerate(doc["images"]):
        try:
            by_id[im["id"]] = im["file_name"]
        except (KeyError, TypeError):
            raise DataError(f"{path}: images[{i}] lacks 'id' or 'file_name'") from None
        out.setdefault(im["file_name"], [])
    for i, ann in enumerate(doc["annotations"]):
        try:
            image_id, caption = ann["image_id"], ann["caption"]
        except (KeyError, TypeError):
            raise DataError(f"{path}: annotations[{i}] lacks 'image_id' or 'caption'") from None
        if image_id not in by_id:
            raise DataError(f"{path}: annotations[{i}] refers to unknown image_id {image_id!r}")
        if not isinstance(caption, str):
            raise DataError(f"{path}: annotations[{i}] caption is not a string")
        out[by_id[image_id]].append(caption.strip())
    return out


def read_caption_tsv(path: PathLike, split: str | None = None) -> dict[str, list[str]]:
    """Captions per image from the Flickr8k TSV (`split, image, caption_idx, caption`, header row) or the
    original `Flickr8k.token.txt` (`name.jpg#i<TAB>caption`). `split` keeps only that split (TSV only)."""
    out: dict[str, list[tuple[int, str]]] = {}
    with open_text(path) as f:
        first = f.readline().rstrip("\n")
        if first.split("\t")[:4] == ["split", "image", "caption_idx", "caption"]:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) != 4:
                    if not line.strip():
                        continue
                    raise DataError(f"{f.path}:{f.lineno}: expected 4 tab-separated fields, got {len(parts)}")
                sp, image, idx, caption = parts
                if split is None or sp == split:
                    out.setdefault(image, []).append((_caption_idx(idx, f), caption))
        else:
            if split is not None:
                raise DataError(f"{path}: has no split column; split={split!r} cannot be applied")
            lines = [first, *f]
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                key, tab, caption = line.rstrip("\n").partition("\t")
                image, hash_, idx = key.rpartition("#")
                if not tab or not hash_:
                    raise DataError(f"{path}:{n}: expected 'image#idx<TAB>caption'")
                out.setdefault(image, []).append((_caption_idx(idx, f, n), caption))
    return {im: [c for _, c in sorted(caps, key=lambda x: x[0])] for im, caps in out.items()}


def _caption_idx(value: str, f: TextFile, line: int | None = None) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{f.path}:{line or f.lineno}: caption index {value!r} is not an integer") from None


# ---------------------------------------------------------------------------------------------------------
# images


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow image to RGB: transparency composited on white, CMYK/palette/16-bit handled."""
    im = ImageOps.exif_transpose(im)  # phone photos store rotation in EXIF
    if im.mode == "RGB":
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        arr = np.asarray(im, dtype=np.uint16)
        im = Image.fromarray((arr >> 8).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Dropping alpha would expose whatever colour the transparent pixels hold (often black).
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


class ImageSource:
    """Images by file name from a folder (searched recursively) or a tar archive (e.g. the Flickr8k tar).

    Names are base file names ("1000268201_693b08cb0a.jpg"), as caption files use them. Reading from an
    uncompressed tar uses positioned reads, so DataLoader worker processes and threads can share one source.
    """

    def __init__(self, path: PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.path = Path(path)
        self.max_pixels = max_pixels
        self._lock = threading.Lock()
        self._fd: tuple[int, int] | None = None  # (pid, fd) for positioned reads from an uncompressed tar
        self._tar: tuple[int, tarfile.TarFile] | None = None  # (pid, handle) for compressed tars
        self._members: dict[
            str, tuple[int, int] | str
        ] = {}  # name -> (offset, size) | member name | file path
        if self.path.is_dir():
            self.kind = "dir"
            for p in sorted(self.path.rglob("*")):
                if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
                    self._add(p.name, str(p))
        elif self.path.is_file():
            try:
                with tarfile.open(self.path) as tf:
                    compressed = _is_compressed(self.path)
                    self.kind = "tar.compressed" if compressed else "tar"
                    for m in tf:
                        name = os.path.basename(m.name)
                        if m.isfile() and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                            self._add(name, m.name if compressed else (m.offset_data, m.size))
            except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
                raise DataError(f"{self.path}: not a readable tar archive ({e})") from None
        else:
            raise DataError(f"image source not found: {self.path} (set --data-dir or {ENV_DATA_DIR})")

    def _add(self, name: str, where: tuple[int, int] | str) -> None:
        if name in self._members:
            raise DataError(f"{self.path}: two images named {name!r}; names must be unique")
        self._members[name] = where

    def names(self) -> list[str]:
        """Sorted image file names."""
        return sorted(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, name: object) -> bool:
        return name in self._members

    def read_bytes(self, name: str) -> bytes:
        """The raw file bytes of image `name`."""
        where = self._members.get(name)
        if where is None:
            raise DataError(f"{self.path}: no image named {name!r}")
        if self.kind == "dir":
            assert isinstance(where, str)
            return Path(where).read_bytes()
        if self.kind == "tar":
            assert isinstance(where, tuple)
            offset, size = where
            data = os.pread(self._reader_fd(), size, offset)
            if len(data) != size:
                raise DataError(f"{self.path}: member {name} is truncated")
            return data
        assert isinstance(where, str)
        with self._lock:
            tf = self._compressed_tar()
            member = tf.extractfile(where)
            if member is None:
                raise DataError(f"{self.path}: member {name} is not a file")
            return member.read()

    def _reader_fd(self) -> int:
        # A descriptor opened by this process; one inherited through fork would still work with pread, but a
        # fresh one keeps worker processes independent of the parent's lifetime.
        pid = os.getpid()
        if self._fd is None or self._fd[0] != pid:
            self._fd = (pid, os.open(self.path, os.O_RDONLY))
        return self._fd[1]

    def _compressed_tar(self) -> tarfile.TarFile:
        pid = os.getpid()
        if self._tar is None or self._tar[0] != pid:
            self._tar = (pid, tarfile.open(self.path))  # noqa: SIM115 (kept open for later reads)
        return self._tar[1]

    def open(self, name: str) -> Image.Image:
        """Image `name` decoded and converted to RGB; broken or oversized images raise `DataError`."""
        return decode_image(self.read_bytes(name), f"{self.path}:{name}", self.max_pixels)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_lock"], state["_fd"], state["_tar"] = None, None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None and fd[0] == os.getpid():
            os.close(fd[1])


def _is_compressed(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(6)
    return head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head == b"\xfd7zXZ\x00"


def decode_image(data: bytes, where: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode image bytes to an RGB Pillow image, refusing broken files and more than `max_pixels` pixels."""
    with warnings.catch_warnings():
        # Pillow warns (and over 2x its limit raises) about decompression bombs; we apply our own limit.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise DataError(f"{where}: image is too large ({e})") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise DataError(f"{where}: not a readable image ({e})") from None
        w, h = im.size
        if w * h > max_pixels:
            raise DataError(
                f"{where}: image is {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}"
            )
        if w == 0 or h == 0:
            raise DataError(f"{where}: image has no pixels ({w}x{h})")
        try:
            im.load()
            return to_rgb(im)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"{where}: broken or truncated image ({e})") from None


def open_image(path: PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """One image file decoded to RGB with the same checks as `ImageSource.open`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    return decode_image(path.read_bytes(), str(path), max_pixels)


def iter_images(source: ImageSource, names: Iterable[str] | None = None) -> Iterator[tuple[str, Image.Image]]:
    """(name, RGB image) pairs for `names` (default: all, sorted)."""
    for name in names if names is not None else source.names():
        yield name, source.open(name)
