"""Checkpoint directory format: round trips, ties, fp16 export, one-line errors, atomic saves, resume."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from gensys.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    load_config,
    load_state_dict_verified,
    load_train_state,
    load_weights,
    read_safetensors_header,
    restore_rng_state,
    save_checkpoint,
    save_train_state,
)
from gensys.data.tokenizer import Tokenizer, train_bpe
from gensys.errors import CheckpointError, GensysError

V, D = 300, 16


class TinyLM(nn.Module):
    """Tied embedding/head, an int buffer, a non-contiguous buffer and two buffers sharing one storage."""

    def __init__(self, d: int = D, layers: int = 2) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(V, d)
        self.blocks = nn.ModuleList(nn.Linear(d, d) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, V, bias=False)
        self.lm_head.weight = self.tok_emb.weight
        self.register_buffer("step", torch.tensor(7, dtype=torch.long))
        self.register_buffer("transposed", torch.arange(6.0).reshape(2, 3).t())
        base = torch.randn(4, 3)
        self.register_buffer("half_a", base[:2])
        self.register_buffer("half_b", base[2:])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.tok_emb(ids)
        for b in self.blocks:
            h = h + b(h)
        return self.lm_head(self.norm(h))


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_bpe(["the quick brown fox jumps over the lazy dog"] * 20, vocab_size=V)


def _build(cfg: dict) -> nn.Module:
    return TinyLM(**cfg["model"])


CONFIG = {"family": "tiny_lm", "model": {"d": D, "layers": 2}}


def _states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_fp32(tmp_path, tok: Tokenizer) -> None:
    torch.manual_seed(0)
    model = TinyLM()
    out = save_checkpoint(tmp_path / "ckpt", model, CONFIG, tokenizer=tok)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    loaded, config, tok2 = load_checkpoint(out, build_fn=_build)
    assert isinstance(loaded, TinyLM) and not loaded.training
    assert _states_equal(model, loaded)
    assert loaded.lm_head.weight is loaded.tok_emb.weight  # the tie survives
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(model(ids), loaded(ids))
    assert config["family"] == "tiny_lm" and config["model"] == CONFIG["model"]
    assert config["tokenizer"]["roles"] == tok.roles and config["weights_dtype"] == "float32"
    assert tok2 is not None and tok2.encode("the lazy fox") == tok.encode("the lazy fox")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp directories left behind


def test_tied_weight_stored_once(tmp_path) -> None:
    model = TinyLM()
    save_checkpoint(tmp_path / "c", model, CONFIG)
    header = read_safetensors_header(tmp_path / "c" / "model.safetensors")
    assert "tok_emb.weight" in header and "lm_head.weight" not in header
    assert json.loads(header["__metadata__"]["gensys_ties"]) == {"lm_head.weight": "tok_emb.weight"}
    state = load_weights(tmp_path / "c")
    assert state["lm_head.weight"] is state["tok_emb.weight"]
    assert torch.equal(state["transposed"], model.transposed)
    assert torch.equal(state["half_b"], model.half_b)


def test_fp16_export_loads_into_fp32(tmp_path) -> None:
    model = TinyLM()
    save_checkpoint(tmp_path / "f32", model, CONFIG)
    save_checkpoint(tmp_path / "f16", model, CONFIG, dtype=torch.float16)
    header = read_safetensors_header(tmp_path / "f16" / "model.safetensors")
    assert header["tok_emb.weight"]["dtype"] == "F16"
    assert header["step"]["dtype"] == "I64"  # integer buffers keep their dtype
    size32 = (tmp_path / "f32" / "model.safetensors").stat().st_size
    size16 = (tmp_path / "f16" / "model.safetensors").stat().st_size
    assert size16 < 0.6 * size32
    loaded, config, _ = load_checkpoint(tmp_path / "f16", build_fn=_build)
    assert config["weights_dtype"] == "float16"
    assert loaded.tok_emb.weight.dtype == torch.float32
    assert torch.equal(loaded.tok_emb.weight, model.tok_emb.weight.half().float())


@pytest.mark.parametrize("keep", [0.5, 0.99, 20, 4])
def test_truncated_weights_give_one_line_error(tmp_path, keep: float) -> None:
    save_checkpoint(tmp_path / "c", TinyLM(), CONFIG)
    path = tmp_path / "c" / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if keep < 1 else int(keep)])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "c", build_fn=_build)
    msg = str(e.value)
    assert "\n" not in msg and "truncated or corrupt" in msg and "model.safetensors" in msg
    assert isinstance(e.value, GensysError)


def test_corrupt_header(tmp_path) -> None:
    save_checkpoint(tmp_path / "c", TinyLM(), CONFIG)
    path = tmp_path / "c" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[10:20] = b"\xff" * 10  # garbage inside the JSON header
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_weights(path)


def test_shape_mismatch_names_tensor(tmp_path) -> None:
    save_checkpoint(tmp_path / "c", TinyLM(d=16), CONFIG)
    with pytest.raises(CheckpointError, match=r"tensor tok_emb.weight has shape \[300, 16\].*\[300, 32\]"):
        load_state_dict_verified(TinyLM(d=32), tmp_path / "c")


def test_dtype_mismatch_names_tensor(tmp_path) -> None:
    save_checkpoint(tmp_path / "c", TinyLM(), CONFIG)
    model = TinyLM()
    model.step = torch.tensor(7.0)  # float where the file has int64
    with pytest.raises(CheckpointError, match="tensor step has dtype int64, the model expects float32"):
        load_state_dict_verified(model, tmp_path / "c")


def test_missing_and_unexpected_tensors(tmp_path) -> None:
    save_checkpoint(tmp_path / "c", TinyLM(layers=2), CONFIG)
    with pytest.raises(CheckpointError, match=r"missing 2 tensor\(s\).*blocks.2.weight"):
        load_state_dict_verified(TinyLM(layers=3), tmp_path / "c")
    with pytest.raises(
        CheckpointError, match=r"2 tensor\(s\) the model does not have: blocks.1.bias, blocks.1.weight"
    ):
        load_state_dict_verified(TinyLM(layers=1), tmp_path / "c")
    small = TinyLM(layers=1)
    load_state_dict_verified(small, tmp_path / "c", strict=False)  # partial load allowed when asked
    assert torch.equal(small.tok_emb.weight, load_weights(tmp_path / "c")["tok_emb.weight"])


def test_bad_directory_and_config(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none", build_fn=_build)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_checkpoint(tmp_path / "empty", build_fn=_build)
    save_checkpoint(tmp_path / "c", TinyLM(), CONFIG)
    (tmp_path / "c" / "config.json").write_text('{"family": "tiny_lm", ')
    with pytest.raises(CheckpointError, match="config.json in .* is not valid JSON"):
        load_config(tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text(json.dumps(CONFIG))
    (tmp_path / "c" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors in .* is missing"):
        load_checkpoint(tmp_path / "c", build_fn=_build)


def test_unknown_family_is_checkpoint_error(tmp_path) -> None:
    save_checkpoint(tmp_path / "c", TinyLM(), {"family": "no_such_family", "model": {}})
    with pytest.raises(CheckpointError, match="does not describe a buildable model.*no_such_family"):
        load_checkpoint(tmp_path / "c")


def test_corrupt_tokenizer_is_checkpoint_error(tmp_path, tok: Tokenizer) -> None:
    save_checkpoint(tmp_path / "c", TinyLM(), CONFIG, tokenizer=tok)
    (tmp_path / "c" / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="tokenizer.json in"):
        load_checkpoint(tmp_path / "c", build_fn=_build)


class _FailingTokenizer(Tokenizer):
    """A tokenizer whose save fails after the weights were written (e.g. the disk fills up)."""

    def save(self, path):  # type: ignore[override]
        (path if str(path).endswith(".json") else path / "tokenizer.json").write_text("{partial")
        raise OSError("No space left on device")


def test_failed_save_keeps_previous_checkpoint(tmp_path, tok: Tokenizer) -> None:
    torch.manual_seed(0)
    old = TinyLM()
    save_checkpoint(tmp_path / "c", old, CONFIG, tokenizer=tok)
    new = TinyLM()
    with torch.no_grad():
        new.tok_emb.weight.add_(1.0)
    bad_tok = _FailingTokenizer(tok.hf, tok.roles)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path / "c", new, CONFIG, tokenizer=bad_tok)
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # temp dir cleaned up
    loaded, _, tok2 = load_checkpoint(tmp_path / "c", build_fn=_build)
    assert _states_equal(old, loaded) and tok2 is not None
    # A successful save replaces it completely.
    save_checkpoint(tmp_path / "c", new, CONFIG)
    loaded, _, tok3 = load_checkpoint(tmp_path / "c", build_fn=_build)
    assert _states_equal(new, loaded) and tok3 is None
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def test_unserialisable_config_fails_before_writing(tmp_path) -> None:
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        save_checkpoint(tmp_path / "c", TinyLM(), {"family": "x", "bad": {1, 2}})
    assert not list(tmp_path.iterdir())


def _train_one_step(model: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    loss = model(torch.tensor([[1, 2, 3]])).logsumexp(-1).mean()
    loss.backward()
    opt.step()
    sched.step()
    return opt, sched


def test_train_state_resume(tmp_path) -> None:
    torch.manual_seed(0)
    model = TinyLM()
    opt, sched = _train_one_step(model)
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(9)
    rng = capture_rng_state()
    state = {
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": rng,
        "data_position": {"epoch": 1, "index": 42},
        "step": 1,
    }
    save_checkpoint(tmp_path / "c", model, CONFIG, train_state=state)
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])

    loaded = load_train_state(tmp_path / "c")
    assert loaded is not None and loaded["data_position"] == {"epoch": 1, "index": 42}
    model2, _, _ = load_checkpoint(tmp_path / "c", build_fn=_build)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    opt2.load_state_dict(loaded["optimizer"])
    sched2.load_state_dict(loaded["scheduler"])
    assert opt2.param_groups[0]["lr"] == pytest.approx(5e-4)
    exp_avg = opt.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], exp_avg)
    torch.manual_seed(999)
    np.random.seed(999)
    random.seed(999)
    restore_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


def test_save_train_state_standalone_and_absent(tmp_path) -> None:
    save_checkpoint(tmp_path / "c", TinyLM(), CONFIG)
    assert load_train_state(tmp_path / "c") is None
    save_train_state(tmp_path / "c", {"step": 5, "data_position": {"index": 3}})
    assert load_train_state(tmp_path / "c") == {"step": 5, "data_position": {"index": 3}}
    with pytest.raises(TypeError, match=r"train_state\['bad'\] is a ndarray"):
        save_train_state(tmp_path / "c", {"bad": np.zeros(3)})
    assert load_train_state(tmp_path / "c")["step"] == 5  # the refused save changed nothing


class _Evil:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_train_state_refuses_arbitrary_pickle(tmp_path, capsys) -> None:
    save_checkpoint(tmp_path / "c", TinyLM(), CONFIG)
    (tmp_path / "c" / "train_state").mkdir()
    torch.save({"step": 1, "payload": _Evil()}, tmp_path / "c" / "train_state" / "state.pt")
    with pytest.raises(CheckpointError, match="not allowed") as e:
        load_train_state(tmp_path / "c")
    assert "\n" not in str(e.value)
    assert "code ran" not in capsys.readouterr().out


def test_truncated_train_state(tmp_path) -> None:
    save_checkpoint(tmp_path / "c", TinyLM(), CONFIG, train_state={"step": 1, "x": torch.randn(1000)})
    path = tmp_path / "c" / "train_state" / "state.pt"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_train_state(tmp_path / "c")


def test_default_builder_rebuilds_a_gensys_model(tmp_path, tok: Tokenizer) -> None:
    # Integration with gensys.models.build_model: config.json's "family" + "model" are enough to rebuild.
    from dataclasses import asdict

    from gensys.models.decoder_lm import DecoderLM, gpt2_config

    torch.manual_seed(0)
    cfg = gpt2_config(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=16)
    model = DecoderLM(cfg).eval()
    save_checkpoint(tmp_path / "lm", model, {"family": "decoder_lm", "model": asdict(cfg)}, tokenizer=tok)
    loaded, config, tok2 = load_checkpoint(tmp_path / "lm")
    assert isinstance(loaded, DecoderLM) and tok2 is not None
    ids = torch.tensor([tok.encode("the quick brown fox")])
    torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_save_load_and_rng(tmp_path) -> None:
    torch.manual_seed(0)
    model = TinyLM().cuda()
    save_checkpoint(
        tmp_path / "c", model, CONFIG, dtype=torch.float16, train_state={"rng": capture_rng_state()}
    )
    assert read_safetensors_header(tmp_path / "c" / "model.safetensors")["tok_emb.weight"]["dtype"] == "F16"
    loaded, _, _ = load_checkpoint(tmp_path / "c", build_fn=_build, map_location="cuda")
    assert loaded.tok_emb.weight.is_cuda and loaded.lm_head.weight is loaded.tok_emb.weight
    assert torch.equal(loaded.tok_emb.weight, model.tok_emb.weight.half().float())
    bf16 = TinyLM().cuda().to(torch.bfloat16)
    save_checkpoint(tmp_path / "b", bf16, CONFIG)
    back = load_checkpoint(tmp_path / "b", build_fn=lambda c: TinyLM().to(torch.bfloat16))[0]
    assert back.tok_emb.weight.dtype == torch.bfloat16 and torch.equal(
        back.tok_emb.weight.cuda(), bf16.tok_emb.weight
    )
    state = load_train_state(tmp_path / "c")
    assert state is not None and "cuda" in state["rng"]
    expected = torch.rand(4, device="cuda")
    torch.cuda.manual_seed_all(1234)
    restore_rng_state(state["rng"])
    assert torch.equal(torch.rand(4, device="cuda"), expected)
