"""The one checkpoint directory format used by every system.

```
<ckpt>/config.json         {"family": ..., "model": {...}, "tokenizer": {"roles": ...}, ...} + format info
<ckpt>/model.safetensors   weights (tied weights stored once; ties recorded in the file's metadata)
<ckpt>/tokenizer.json      Hugging Face `tokenizers` file (optional)
<ckpt>/train_state/state.pt  optimizer, scheduler, RNG, data position (optional; for resume)
```

Saving writes a complete sibling temp directory first and renames it into place, so the previous
checkpoint survives any failure until the new one is whole. Loading checks every tensor's shape and dtype
against the model and turns a truncated, corrupt or mismatched file into a one-line `CheckpointError`.
Nothing here unpickles untrusted data: weights go through safetensors and `train_state/` is read with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import shutil
import struct
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from gensys.data.atomic import atomic_write
from gensys.data.tokenizer import TOKENIZER_FILE, Tokenizer
from gensys.errors import CheckpointError, GensysError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAIN_STATE_DIR = "train_state"
TRAIN_STATE_FILE = "state.pt"
FORMAT_VERSION = 1

_TIES_KEY = "gensys_ties"  # safetensors metadata: JSON {dropped_name: kept_name}
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit; a bigger claim means a corrupt file

_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


# ----------------------------------------------------------------------------------------------------------
# save


def save_checkpoint(
    out_dir: str | os.PathLike,
    model: nn.Module,
    config: Mapping[str, Any],
    tokenizer: Tokenizer | None = None,
    train_state: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a checkpoint directory atomically and return its path.

    `config` must be JSON-serialisable; it should carry `"family"` and `"model"` (the builder's settings) so
    `load_checkpoint` can rebuild the model. `dtype=torch.float16` stores floating-point weights in half
    precision (loading casts back to the model's dtype). `train_state` goes to `train_state/` for resume.
    """
    out_dir = Path(out_dir)
    tensors, ties = _export_state_dict(model.state_dict(), dtype)
    cfg = dict(config)
    cfg["gensys_format"] = FORMAT_VERSION
    cfg["weights_dtype"] = str(dtype or _main_dtype(tensors)).removeprefix("torch.")
    if tokenizer is not None:
        tok_cfg = dict(cfg.get("tokenizer") or {})
        tok_cfg.update(tokenizer.config())
        cfg["tokenizer"] = tok_cfg
    try:
        config_text = json.dumps(cfg, indent=2, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint config is not JSON-serialisable: {e}") from None
    if train_state is not None:
        _check_plain(train_state, "train_state")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        (tmp / CONFIG_FILE).write_text(config_text + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", _TIES_KEY: json.dumps(ties)})
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER_FILE)
        if train_state is not None:
            (tmp / TRAIN_STATE_DIR).mkdir()
            torch.save(dict(train_state), tmp / TRAIN_STATE_DIR / TRAIN_STATE_FILE)
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync_path(f)
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _export_state_dict(
    state: Mapping[str, torch.Tensor], dtype: torch.dtype | None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Contiguous CPU tensors with tied (identical) tensors kept once; returns (tensors, {dropped: kept})."""
    out: dict[str, torch.Tensor] = {}
    ties: dict[str, str] = {}
    seen_view: dict[tuple, str] = {}
    seen_storage: set[tuple] = set()
    for name, t in state.items():
        t = t.detach()
        if t.numel() > 0:
            storage = (t.device, t.untyped_storage().data_ptr())
            view = (*storage, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
            if view in seen_view:  # the same tensor under two names: a tied weight
                ties[name] = seen_view[view]
                continue
            seen_view[view] = name
            shared = storage in seen_storage
            seen_storage.add(storage)
        else:
            shared = False
        t = t.to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        # safetensors refuses tensors that share memory and stores views badly: give each its own buffer.
        if shared or not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.contiguous().clone()
        out[name] = t
    return out, ties


def _main_dtype(tensors: Mapping[str, torch.Tensor]) -> torch.dtype:
    floats = [t.dtype for t in tensors.values() if t.is_floating_point()]
    return max(set(floats), key=floats.count) if floats else torch.float32


def _swap_in(tmp: Path, target: Path) -> None:
    """Move the finished `tmp` directory to `target`, replacing an existing checkpoint only at the end."""
    if not target.exists():
        os.replace(tmp, target)
        return
    if not target.is_dir():
        raise CheckpointError(f"cannot write checkpoint: {target} exists and is not a directory")
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)  # put the previous checkpoint back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------------------
# load


def load_config(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """Read `config.json` of a checkpoint, with a clear error if it is missing or malformed."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        # A crash between the two renames of `_swap_in` leaves the previous checkpoint under this name.
        leftovers = sorted(ckpt_dir.parent.glob(f".{ckpt_dir.name}.old-*"))
        hint = f" (the previous checkpoint is at {leftovers[-1]}; rename it back)" if leftovers else ""
        raise CheckpointError(f"checkpoint directory not found: {ckpt_dir}{hint}")
    path = ckpt_dir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir} is not a gensys checkpoint: {CONFIG_FILE} is missing")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{CONFIG_FILE} in {ckpt_dir} is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{CONFIG_FILE} in {ckpt_dir} must hold a JSON object")
    if config.get("gensys_format", FORMAT_VERSION) > FORMAT_VERSION:
        raise CheckpointError(
            f"{ckpt_dir} has checkpoint format {config['gensys_format']}; "
            f"this gensys reads up to {FORMAT_VERSION}"
        )
    return config


def load_tokenizer(ckpt_dir: str | os.PathLike, config: Mapping[str, Any] | None = None) -> Tokenizer | None:
    """The checkpoint's tokenizer (roles from config.json), or None if it has no tokenizer.json."""
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / TOKENIZER_FILE
    if not path.is_file():
        return None
    config = load_config(ckpt_dir) if config is None else config
    roles = (config.get("tokenizer") or {}).get("roles")
    try:
        return Tokenizer.load(path, roles=roles)
    except GensysError as e:
        raise CheckpointError(f"{TOKENIZER_FILE} in {ckpt_dir}: {e}") from None


def _default_build_fn() -> Callable[[dict[str, Any]], nn.Module] | None:
    try:
        from gensys.models import build_model
    except ImportError:
        return None

    def build(config: dict[str, Any]) -> nn.Module:
        if "family" not in config:
            raise CheckpointError(f"{CONFIG_FILE} has no 'family' key; cannot choose a model builder")
        try:
            return build_model(config["family"], config.get("model", config))
        except (ValueError, KeyError) as e:  # unknown family or bad model settings: the file's fault
            raise CheckpointError(
                f"{CONFIG_FILE} does not describe a buildable model ({_first_line(e)})"
            ) from None

    return build


def load_checkpoint(
    ckpt_dir: str | os.PathLike,
    build_fn: Callable[[dict[str, Any]], nn.Module] | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[nn.Module | dict[str, torch.Tensor], dict[str, Any], Tokenizer | None]:
    """Load `(model, config, tokenizer)` from a checkpoint directory.

    The model is built by `build_fn(config)` (default: `gensys.models.build_model(config["family"],
    config["model"])`), filled with verified weights, put in eval mode and moved to `map_location`. Without
    any builder the first item is the state dict (tied names restored). `tokenizer` is None if absent.
    """
    ckpt_dir = Path(ckpt_dir)
    config = load_config(ckpt_dir)
    tokenizer = load_tokenizer(ckpt_dir, config)
    build = build_fn or _default_build_fn()
    weights = ckpt_dir / WEIGHTS_FILE
    if build is None:
        return load_weights(weights, map_location=map_location), config, tokenizer
    try:
        model = build(config)
    except CheckpointError as e:
        raise CheckpointError(f"{ckpt_dir}: {e}") from None
    load_state_dict_verified(model, weights)
    model.to(map_location)
    model.eval()
    return model, config, tokenizer


def load_weights(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """All tensors of a model.safetensors (file or checkpoint dir), tied names restored."""
    path = _weights_path(path)
    header = read_safetensors_header(path)
    ties = _ties(header, path)
    tensors = _load_tensors(path, str(map_location))
    for dropped, kept in ties.items():
        tensors[dropped] = tensors[kept]
    return tensors


def load_state_dict_verified(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> None:
    """Load a model.safetensors into `model` after checking every tensor's name, shape and dtype.

    Floating-point tensors may differ in precision (an fp16 file loads into an fp32 model: cast to the model's
    dtype); any other difference raises `CheckpointError` naming the tensor. With `strict=False` missing and
    unexpected names are allowed (shape/dtype are still checked for the names both have).
    """
    path = _weights_path(path)
    where = f"{path.name} in {path.parent}"
    header = read_safetensors_header(path)
    ties = _ties(header, path)
    in_file = {k: v for k, v in header.items() if k != "__metadata__"}
    expected = model.state_dict()

    missing = [k for k in expected if k not in in_file and k not in ties]
    unexpected = [k for k in in_file if k not in expected]
    if strict and missing:
        raise CheckpointError(f"{where}: missing {len(missing)} tensor(s) the model needs: {_few(missing)}")
    if strict and unexpected:
        raise CheckpointError(
            f"{where}: {len(unexpected)} tensor(s) the model does not have: {_few(unexpected)}"
        )
    for name, ref in expected.items():
        info = in_file.get(name) or in_file.get(ties.get(name, ""))
        if info is None:
            continue
        shape = tuple(info["shape"])
        if shape != tuple(ref.shape):
            raise CheckpointError(
                f"{where}: tensor {name} has shape {list(shape)}, the model expects {list(ref.shape)}"
            )
        file_dtype = _ST_DTYPES.get(info["dtype"])
        if file_dtype is None:
            raise CheckpointError(f"{where}: tensor {name} has unsupported dtype {info['dtype']}")
        if file_dtype != ref.dtype and not (file_dtype.is_floating_point and ref.dtype.is_floating_point):
            raise CheckpointError(
                f"{where}: tensor {name} has dtype {str(file_dtype).removeprefix('torch.')}, "
                f"the model expects {str(ref.dtype).removeprefix('torch.')}"
            )

    tensors = _load_tensors(path, "cpu")
    state: dict[str, torch.Tensor] = {}
    for name, ref in expected.items():
        src = name if name in tensors else ties.get(name)
        if src is None or src not in tensors:
            continue
        state[name] = tensors[src].to(ref.dtype)
    model.load_state_dict(state, strict=strict)


def read_safetensors_header(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and sanity-check a safetensors header without reading the tensors (catches truncation)."""
    path = Path(path)
    where = f"{path.name} in {path.parent}"
    if not path.is_file():
        raise CheckpointError(f"{where} is missing")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{where} is truncated or corrupt (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER_BYTES or n > size - 8:
            raise CheckpointError(
                f"{where} is truncated or corrupt (header claims {n} bytes, file has {size - 8} after it)"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        data_bytes = size - 8 - n
        need = 0
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            numel = 1
            for s in info["shape"]:
                numel *= int(s)
            dt = _ST_DTYPES.get(info["dtype"])
            if dt is not None and end - start != numel * dt.itemsize:
                raise ValueError(f"tensor {name} has {end - start} bytes for shape {info['shape']}")
            need = max(need, end)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{where} is truncated or corrupt (bad header: {e})") from None
    if need > data_bytes:
        raise CheckpointError(
            f"{where} is truncated or corrupt (tensor data needs {need} bytes, file has {data_bytes})"
        )
    return header


def _weights_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / WEIGHTS_FILE if path.is_dir() else path


def _ties(header: Mapping[str, Any], path: Path) -> dict[str, str]:
    meta = header.get("__metadata__") or {}
    try:
        ties = json.loads(meta.get(_TIES_KEY, "{}"))
    except json.JSONDecodeError:
        raise CheckpointError(f"{path.name} in {path.parent} is corrupt (bad tie metadata)") from None
    for dropped, kept in ties.items():
        if kept not in header:
            raise CheckpointError(
                f"{path.name} in {path.parent} is corrupt ({dropped} is tied to absent {kept})"
            )
    return ties


def _load_tensors(path: Path, device: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=device)
    except Exception as e:  # SafetensorError and OS errors: the header check above catches most cases
        raise CheckpointError(
            f"{path.name} in {path.parent} is truncated or corrupt ({_first_line(e)})"
        ) from None


def _few(names: list[str], n: int = 5) -> str:
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ----------------------------------------------------------------------------------------------------------
# train state (resume)

# Types `torch.load(weights_only=True)` accepts; anything else would save fine and then fail at resume time.
_PLAIN_TYPES = (
    str,
    bytes,
    int,
    float,
    complex,
    bool,
    type(None),
    torch.Tensor,
    torch.Size,
    torch.dtype,
    torch.device,
)


def _check_plain(obj: Any, where: str) -> None:
    if isinstance(obj, _PLAIN_TYPES):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            _check_plain(k, f"{where} key")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, list | tuple | set | frozenset):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__name__}; train state may hold only tensors, numbers, strings and "
        "dicts/lists of them (so it can be read back without unpickling code)"
    )


def save_train_state(ckpt_dir: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write `state` to `<ckpt_dir>/train_state/state.pt` atomically.

    Expected keys (by convention): "optimizer", "scheduler" (state dicts), "rng" (`capture_rng_state()`),
    "data_position", "step". Only plain data is allowed (checked here, not at resume time).
    """
    _check_plain(state, "train_state")
    buf = io.BytesIO()
    torch.save(dict(state), buf)
    data = buf.getvalue()
    return atomic_write(Path(ckpt_dir) / TRAIN_STATE_DIR / TRAIN_STATE_FILE, lambda p: p.write_bytes(data))


def load_train_state(ckpt_dir: str | os.PathLike) -> dict[str, Any] | None:
    """Read `<ckpt_dir>/train_state/state.pt` with the safe unpickler; None if the checkpoint has none."""
    path = Path(ckpt_dir) / TRAIN_STATE_DIR / TRAIN_STATE_FILE
    if not path.is_file():
        return None
    where = f"{TRAIN_STATE_DIR}/{TRAIN_STATE_FILE} in {ckpt_dir}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # The safe unpickler refused a global: say which, and do not suggest disabling the check.
        detail = next((ln.strip() for ln in str(e).splitlines() if "Unsupported" in ln), _first_line(e))
        raise CheckpointError(f"{where} holds an object that is not allowed ({detail})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{where} is truncated or corrupt ({_first_line(e)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{where} does not hold a dict")
    return state


def capture_rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU and CUDA), numpy and Python `random`, as plain data for `save_train_state`."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of `capture_rng_state` (CUDA states are restored only if CUDA is available)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
