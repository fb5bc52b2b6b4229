"""Hugging Face interop for decoder LMs of the GPT-2 and Llama architectures.

    gensys convert from-hf HF_DIR OUT   HF dir (config.json, *.safetensors, tokenizer.json) -> checkpoint
    gensys convert to-hf CKPT OUT       gensys checkpoint -> HF dir loadable by transformers / vLLM

The in-memory mappings (`config_from_hf`, `state_dict_from_hf`, `config_to_hf`, `state_dict_to_hf` and the
per-architecture functions) work on plain dicts, so tests and parity checks can convert a live HF model.

Layout notes: GPT-2 stores projections as `Conv1D` (weight (in, out), the transpose of `nn.Linear`) and fuses
q/k/v into one `c_attn`; we split it because tensor parallelism keys on q_proj/k_proj/v_proj. Llama's rotary
layout ("rotate half") is the one `gensys.nn.positions` uses, so its q/k weights copy 1:1.
Only safetensors weights are read: a `pytorch_model.bin` would need unpickling untrusted data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from gensys.errors import CheckpointError, GensysError
from gensys.models.decoder_lm import DecoderLM, DecoderLMConfig
from gensys.models.seq2seq import Seq2Seq, Seq2SeqConfig, marian_config, t5_config

_GPT2_ACT = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
_GPT2_ACT_BACK = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
# HF buffers that carry no weights (causal-mask tables, rotary frequencies): skipped on import.
_HF_BUFFERS = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------------------------------------
# configs


def config_from_hf(hf: dict[str, Any]) -> DecoderLMConfig:
    """Our config for an HF `config.json` dict of model_type "gpt2" or "llama"."""
    model_type = hf.get("model_type")
    if model_type == "gpt2":
        return gpt2_config_from_hf(hf)
    if model_type == "llama":
        return llama_config_from_hf(hf)
    raise GensysError(f"unsupported HF model_type {model_type!r}: convert handles 'gpt2' and 'llama'")


def gpt2_config_from_hf(hf: dict[str, Any]) -> DecoderLMConfig:
    """DecoderLMConfig equal to an HF GPT-2 config."""
    act = hf.get("activation_function", "gelu_new")
    if act not in _GPT2_ACT:
        raise GensysError(
            f"GPT-2 activation_function {act!r} is not supported (expected one of {list(_GPT2_ACT)})"
        )
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights", True) is False:
        raise GensysError("GPT-2 configs with non-standard attention scaling are not supported")
    d = hf["n_embd"]
    return DecoderLMConfig(
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layers=hf["n_layer"],
        n_heads=hf["n_head"],
        d_ff=hf.get("n_inner") or 4 * d,
        max_seq_len=hf.get("n_positions", 1024),
        pos="learned",
        norm="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        activation=_GPT2_ACT[act],
        attn_bias=True,
        mlp_bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def _rope_theta(hf: dict[str, Any]) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind != "default":
        raise GensysError(f"Llama rope type {kind!r} is not supported (only plain RoPE)")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def llama_config_from_hf(hf: dict[str, Any]) -> DecoderLMConfig:
    """DecoderLMConfig equal to an HF Llama config."""
    if hf.get("hidden_act", "silu") != "silu":
        raise GensysError(f"Llama hidden_act {hf['hidden_act']!r} is not supported (expected 'silu')")
    n_heads = hf["num_attention_heads"]
    return DecoderLMConfig(
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
        d_ff=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        pos="rope",
        rope_theta=_rope_theta(hf),
        norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        activation="swiglu",
        attn_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def hf_architecture(cfg: DecoderLMConfig) -> str:
    """ "gpt2" or "llama": the HF architecture that computes exactly what `cfg` does (GensysError if none)."""
    head_dim = cfg.head_dim or cfg.d_model // cfg.n_heads
    mha = (cfg.n_kv_heads or cfg.n_heads) == cfg.n_heads and head_dim * cfg.n_heads == cfg.d_model
    if (
        cfg.pos == "learned"
        and cfg.norm == "layernorm"
        and cfg.activation in _GPT2_ACT_BACK
        and cfg.attn_bias
        and cfg.mlp_bias
        and mha
    ):
        return "gpt2"
    if (
        cfg.pos == "rope"
        and cfg.rotary_fraction == 1.0
        and cfg.norm == "rmsnorm"
        and cfg.activation == "swiglu"
    ):
        return "llama"
    raise GensysError(
        "this model matches neither HF GPT-2 (learned positions, LayerNorm, GELU/ReLU, biases, MHA) nor "
        f"HF Llama (RoPE, RMSNorm, SwiGLU): pos={cfg.pos}, norm={cfg.norm}, activation={cfg.activation}"
    )


def config_to_hf(cfg: DecoderLMConfig) -> dict[str, Any]:
    """An HF `config.json` dict for `cfg` (GPT-2 or Llama architecture, chosen by `hf_architecture`)."""
    if hf_architecture(cfg) == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": cfg.vocab_size,
            "n_positions": cfg.max_seq_len,
            "n_embd": cfg.d_model,
            "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads,
            "n_inner": cfg.d_ff,
            "activation_function": _GPT2_ACT_BACK[cfg.activation],
            "layer_norm_epsilon": cfg.norm_eps,
            "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.dropout,
            "scale_attn_weights": True,
            "tie_word_embeddings": cfg.tie_embeddings,
            "torch_dtype": "float32",
        }
    head_dim = cfg.head_dim or cfg.d_model // cfg.n_heads
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads or cfg.n_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        # Both spellings: transformers >= 5 reads rope_parameters, older tools (and vLLM) read rope_theta.
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": cfg.attn_bias,
        "mlp_bias": cfg.mlp_bias,
        "attention_dropout": cfg.dropout,
        "tie_word_embeddings": cfg.tie_embeddings,
        "torch_dtype": "float32",
    }


# ---------------------------------------------------------------------------------------------------------
# state dicts


def _strip(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Drop the base-model prefix ("transformer." / "model.") if present; skip weightless HF buffers."""
    out = {}
    for k, v in sd.items():
        if k.endswith(_HF_BUFFERS):
            continue
        out[k.removeprefix(prefix)] = v
    return out


def _check_all_used(sd: dict[str, Tensor], used: set[str], arch: str) -> None:
    left = sorted(set(sd) - used)
    if left:
        raise GensysError(f"{arch} weights not understood by the converter: {left[:5]}")


def gpt2_state_dict_from_hf(sd: dict[str, Tensor], cfg: DecoderLMConfig) -> dict[str, Tensor]:
    """Our DecoderLM state dict from an HF GPT2LMHeadModel / GPT2Model state dict."""
    sd = _strip(sd, "transformer.")
    d = cfg.d_model
    out: dict[str, Tensor] = {"tok_emb.weight": sd["wte.weight"], "pos_emb.emb.weight": sd["wpe.weight"]}
    used = {"wte.weight", "wpe.weight"}
    for i in range(cfg.n_layers):
        h, b = f"h.{i}.", f"blocks.{i}."
        w_qkv = sd[h + "attn.c_attn.weight"].t()  # Conv1D (D, 3D) -> Linear (3D, D)
        b_qkv = sd[h + "attn.c_attn.bias"]
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[f"{b}attn.{name}.weight"] = w_qkv[j * d : (j + 1) * d]
            out[f"{b}attn.{name}.bias"] = b_qkv[j * d : (j + 1) * d]
        pairs = {
            "attn.c_proj": "attn.o_proj",
            "mlp.c_fc": "mlp.up_proj",
            "mlp.c_proj": "mlp.down_proj",
        }
        for src, dst in pairs.items():
            out[f"{b}{dst}.weight"] = sd[f"{h}{src}.weight"].t()
            out[f"{b}{dst}.bias"] = sd[f"{h}{src}.bias"]
        for src, dst in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
            out[f"{b}{dst}.weight"] = sd[f"{h}{src}.weight"]
            out[f"{b}{dst}.bias"] = sd[f"{h}{src}.bias"]
        used |= {f"{h}{n}.{p}" for n in ("attn.c_attn", *pairs, "ln_1", "ln_2") for p in ("weight", "bias")}
    out["norm.weight"], out["norm.bias"] = sd["ln_f.weight"], sd["ln_f.bias"]
    used |= {"ln_f.weight", "ln_f.bias", "lm_head.weight"}
    out["lm_head.weight"] = out["tok_emb.weight"] if cfg.tie_embeddings else sd["lm_head.weight"]
    _check_all_used(sd, used, "GPT-2")
    return {k: v.contiguous() for k, v in out.items()}


def gpt2_state_dict_to_hf(sd: dict[str, Tensor], cfg: DecoderLMConfig) -> dict[str, Tensor]:
    """HF GPT2LMHeadModel state dict (with "transformer." prefix) from our DecoderLM state dict."""
    out: dict[str, Tensor] = {
        "transformer.wte.weight": sd["tok_emb.weight"],
        "transformer.wpe.weight": sd["pos_emb.emb.weight"],
    }
    for i in range(cfg.n_layers):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        qkv = [sd[f"{b}attn.{n}.weight"] for n in ("q_proj", "k_proj", "v_proj")]
        out[h + "attn.c_attn.weight"] = torch.cat(qkv, 0).t()
        out[h + "attn.c_attn.bias"] = torch.cat(
            [sd[f"{b}attn.{n}.bias"] for n in ("q_proj", "k_proj", "v_proj")]
        )
        for dst, src in (
            ("attn.c_proj", "attn.o_proj"),
            ("mlp.c_fc", "mlp.up_proj"),
            ("mlp.c_proj", "mlp.down_proj"),
        ):
            out[f"{h}{dst}.weight"] = sd[f"{b}{src}.weight"].t()
            out[f"{h}{dst}.bias"] = sd[f"{b}{src}.bias"]
        for dst, src in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
            out[f"{h}{dst}.weight"] = sd[f"{b}{src}.weight"]
            out[f"{h}{dst}.bias"] = sd[f"{b}{src}.bias"]
    out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = sd["norm.weight"], sd["norm.bias"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return {k: v.contiguous() for k, v in out.items()}


_LLAMA_LAYER = {
    "self_attn.q_proj": "attn.q_proj",
    "self_attn.k_proj": "attn.k_proj",
    "self_attn.v_proj": "attn.v_proj",
    "self_attn.o_proj": "attn.o_proj",
    "mlp.gate_proj": "mlp.gate_proj",
    "mlp.up_proj": "mlp.up_proj",
    "mlp.down_proj": "mlp.down_proj",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "mlp_norm",
}


def llama_state_dict_from_hf(sd: dict[str, Tensor], cfg: DecoderLMConfig) -> dict[str, Tensor]:
    """Our DecoderLM state dict from an HF LlamaForCausalLM / LlamaModel state dict (names map 1:1)."""
    sd = _strip(sd, "model.")
    out: dict[str, Tensor] = {"tok_emb.weight": sd["embed_tokens.weight"], "norm.weight": sd["norm.weight"]}
    used = {"embed_tokens.weight", "norm.weight", "lm_head.weight"}
    for i in range(cfg.n_layers):
        for src, dst in _LLAMA_LAYER.items():
            for p in ("weight", "bias"):
                key = f"layers.{i}.{src}.{p}"
                if key in sd:
                    out[f"blocks.{i}.{dst}.{p}"] = sd[key]
                    used.add(key)
    out["lm_head.weight"] = out["tok_emb.weight"] if cfg.tie_embeddings else sd["lm_head.weight"]
    _check_all_used(sd, used, "Llama")
    return {k: v.contiguous() for k, v in out.items()}


def llama_state_dict_to_hf(sd: dict[str, Tensor], cfg: DecoderLMConfig) -> dict[str, Tensor]:
    """HF LlamaForCausalLM state dict from our DecoderLM state dict."""
    out: dict[str, Tensor] = {
        "model.embed_tokens.weight": sd["tok_emb.weight"],
        "model.norm.weight": sd["norm.weight"],
    }
    for i in range(cfg.n_layers):
        for dst, src in _LLAMA_LAYER.items():
            for p in ("weight", "bias"):
                key = f"blocks.{i}.{src}.{p}"
                if key in sd:
                    out[f"model.layers.{i}.{dst}.{p}"] = sd[key]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def state_dict_from_hf(sd: dict[str, Tensor], cfg: DecoderLMConfig, model_type: str) -> dict[str, Tensor]:
    """Dispatch to the GPT-2 / Llama mapping by HF model_type."""
    if model_type == "gpt2":
        return gpt2_state_dict_from_hf(sd, cfg)
    if model_type == "llama":
        return llama_state_dict_from_hf(sd, cfg)
    raise GensysError(f"unsupported HF model_type {model_type!r}")


def state_dict_to_hf(sd: dict[str, Tensor], cfg: DecoderLMConfig) -> dict[str, Tensor]:
    """HF state dict for our DecoderLM state dict (architecture chosen by `hf_architecture`)."""
    if hf_architecture(cfg) == "gpt2":
        return gpt2_state_dict_to_hf(sd, cfg)
    return llama_state_dict_to_hf(sd, cfg)


def model_from_hf(hf_model: torch.nn.Module) -> DecoderLM:
    """A DecoderLM with the weights of a live HF GPT2LMHeadModel / LlamaForCausalLM (for parity checks)."""
    hf_cfg = hf_model.config.to_dict()
    cfg = config_from_hf(hf_cfg)
    model = DecoderLM(cfg)
    model.load_state_dict(state_dict_from_hf(hf_model.state_dict(), cfg, hf_cfg["model_type"]))
    return model.eval()


# ---------------------------------------------------------------------------------------------------------
# encoder-decoders (in memory only: for parity tests of seq2seq models and of decoding against HF generate)


def seq2seq_config_from_hf(hf: dict[str, Any]) -> Seq2SeqConfig:
    """Seq2SeqConfig equal to an HF Marian or T5 config dict (shared source/target vocabulary)."""
    model_type = hf.get("model_type")
    if model_type == "marian":
        act = {"swish": "silu", "gelu_new": "gelu_tanh"}.get(
            hf["activation_function"], hf["activation_function"]
        )
        return marian_config(
            vocab_size=hf["vocab_size"],
            d_model=hf["d_model"],
            n_heads=hf["encoder_attention_heads"],
            d_ff=hf["encoder_ffn_dim"],
            n_enc_layers=hf["encoder_layers"],
            n_dec_layers=hf["decoder_layers"],
            activation=act,
            scale_embedding=bool(hf.get("scale_embedding", False)),
            lm_head_bias=True,
            dropout=0.0,
        )
    if model_type == "t5":
        ff = hf.get("feed_forward_proj", "relu")
        act = {"relu": "relu", "gated-gelu": "geglu", "gated-silu": "swiglu"}.get(ff)
        if act is None:
            raise GensysError(f"T5 feed_forward_proj {ff!r} is not supported")
        return t5_config(
            vocab_size=hf["vocab_size"],
            d_model=hf["d_model"],
            n_heads=hf["num_heads"],
            head_dim=hf["d_kv"],
            d_ff=hf["d_ff"],
            n_enc_layers=hf["num_layers"],
            n_dec_layers=hf.get("num_decoder_layers") or hf["num_layers"],
            rel_buckets=hf["relative_attention_num_buckets"],
            rel_max_distance=hf["relative_attention_max_distance"],
            norm_eps=hf["layer_norm_epsilon"],
            activation=act,
            tied_output_scale=bool(hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True))),
            dropout=0.0,
        )
    raise GensysError(f"unsupported HF encoder-decoder {model_type!r}: expected 'marian' or 't5'")


def marian_state_dict_from_hf(sd: dict[str, Tensor], cfg: Seq2SeqConfig) -> dict[str, Tensor]:
    """Our Seq2Seq state dict from an HF MarianMTModel state dict (fixed sinusoid tables are dropped)."""
    out: dict[str, Tensor] = {"tok_emb.weight": sd["model.shared.weight"]}
    attn = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "out_proj": "o_proj"}
    for side, n in (("encoder", cfg.n_enc_layers), ("decoder", cfg.n_dec_layers)):
        for i in range(n):
            h, b = f"model.{side}.layers.{i}.", f"{side}.blocks.{i}."
            pairs = {f"self_attn.{k}": f"attn.{v}" for k, v in attn.items()}
            pairs |= {"self_attn_layer_norm": "attn_norm", "fc1": "mlp.up_proj", "fc2": "mlp.down_proj"}
            pairs |= {"final_layer_norm": "mlp_norm"}
            if side == "decoder":
                pairs |= {f"encoder_attn.{k}": f"cross_attn.{v}" for k, v in attn.items()}
                pairs |= {"encoder_attn_layer_norm": "cross_norm"}
            for src, dst in pairs.items():
                out[f"{b}{dst}.weight"] = sd[f"{h}{src}.weight"]
                out[f"{b}{dst}.bias"] = sd[f"{h}{src}.bias"]
    out["lm_head.weight"] = sd["lm_head.weight"]
    out["lm_head.bias"] = sd["final_logits_bias"][0]
    return {k: v.contiguous() for k, v in out.items()}


def t5_state_dict_from_hf(sd: dict[str, Tensor], cfg: Seq2SeqConfig) -> dict[str, Tensor]:
    """Our Seq2Seq state dict from an HF T5ForConditionalGeneration state dict."""
    out: dict[str, Tensor] = {"tok_emb.weight": sd["shared.weight"], "lm_head.weight": sd["lm_head.weight"]}
    attn = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}
    mlp = {"wi": "up_proj", "wo": "down_proj", "wi_0": "gate_proj", "wi_1": "up_proj"}
    for side, n in (("encoder", cfg.n_enc_layers), ("decoder", cfg.n_dec_layers)):
        ff = 1 if side == "encoder" else 2  # index of the feed-forward sub-layer inside a T5 block
        for i in range(n):
            h, b = f"{side}.block.{i}.layer.", f"{side}.blocks.{i}."
            for k, v in attn.items():
                out[f"{b}attn.{v}.weight"] = sd[f"{h}0.SelfAttention.{k}.weight"]
                if side == "decoder":
                    out[f"{b}cross_attn.{v}.weight"] = sd[f"{h}1.EncDecAttention.{k}.weight"]
            out[f"{b}attn_norm.weight"] = sd[f"{h}0.layer_norm.weight"]
            if side == "decoder":
                out[f"{b}cross_norm.weight"] = sd[f"{h}1.layer_norm.weight"]
            for k, v in mlp.items():
                key = f"{h}{ff}.DenseReluDense.{k}.weight"
                if key in sd:
                    out[f"{b}mlp.{v}.weight"] = sd[key]
            out[f"{b}mlp_norm.weight"] = sd[f"{h}{ff}.layer_norm.weight"]
        out[f"{side}.norm.weight"] = sd[f"{side}.final_layer_norm.weight"]
        rel = f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        out[f"{side[:3]}_rel_bias.emb.weight"] = sd[rel]
    return {k: v.contiguous() for k, v in out.items()}


def seq2seq_model_from_hf(hf_model: torch.nn.Module) -> Seq2Seq:
    """A Seq2Seq with the weights of a live HF MarianMTModel / T5ForConditionalGeneration."""
    hf_cfg = hf_model.config.to_dict()
    hf_cfg.setdefault("scale_decoder_outputs", getattr(hf_model.config, "scale_decoder_outputs", True))
    cfg = seq2seq_config_from_hf(hf_cfg)
    mapping = marian_state_dict_from_hf if hf_cfg["model_type"] == "marian" else t5_state_dict_from_hf
    model = Seq2Seq(cfg)
    model.load_state_dict(mapping(hf_model.state_dict(), cfg))
    return model.eval()


# ---------------------------------------------------------------------------------------------------------
# directories


def _read_hf_weights(hf_dir: Path) -> dict[str, Tensor]:
    single = hf_dir / "model.safetensors"
    index = hf_dir / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd: dict[str, Tensor] = {}
        for shard in shards:
            sd.update(load_file(str(hf_dir / shard)))
        return sd
    if (hf_dir / "pytorch_model.bin").is_file():
        raise GensysError(
            f"{hf_dir} has only pytorch_model.bin; convert reads safetensors only (a .bin needs unpickling). "
            "Re-save it with `save_pretrained(..., safe_serialization=True)`."
        )
    raise GensysError(f"{hf_dir} has no model.safetensors (or sharded model.safetensors.index.json)")


def from_hf(hf_dir: str | os.PathLike, out_dir: str | os.PathLike, dtype: str = "float32") -> Path:
    """Convert an HF GPT-2 / Llama directory into a gensys checkpoint directory; returns its path."""
    from gensys.checkpoint import save_checkpoint
    from gensys.data.tokenizer import TOKENIZER_FILE, Tokenizer

    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise GensysError(f"HF directory not found: {hf_dir}")
    cfg_path = hf_dir / "config.json"
    if not cfg_path.is_file():
        raise GensysError(f"{hf_dir} is not an HF model directory: config.json is missing")
    try:
        hf_cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GensysError(f"{cfg_path} is not valid JSON ({e})") from None
    cfg = config_from_hf(hf_cfg)
    sd = state_dict_from_hf(_read_hf_weights(hf_dir), cfg, hf_cfg["model_type"])
    model = DecoderLM(cfg)
    try:
        model.load_state_dict({k: v.float() for k, v in sd.items()})
    except RuntimeError as e:
        raise GensysError(
            f"weights in {hf_dir} do not match its config.json: {str(e).splitlines()[-1]}"
        ) from None
    tok_path = hf_dir / TOKENIZER_FILE
    tokenizer = Tokenizer.from_hf_file(tok_path) if tok_path.is_file() else None
    config = {
        "family": "decoder_lm",
        "model": asdict(cfg),
        "converted_from": {"hf_model_type": hf_cfg["model_type"]},
    }
    return save_checkpoint(out_dir, model, config, tokenizer=tokenizer, dtype=DTYPES[dtype])


def to_hf(ckpt_dir: str | os.PathLike, out_dir: str | os.PathLike, dtype: str = "float32") -> Path:
    """Write a gensys decoder_lm checkpoint as an HF directory (config.json, model.safetensors, tokenizer)."""
    from gensys.checkpoint import load_checkpoint

    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise GensysError(f"checkpoint directory not found: {ckpt_dir}")
    model, config, tokenizer = load_checkpoint(ckpt_dir)
    if config.get("family") != "decoder_lm":
        raise GensysError(
            f"{ckpt_dir} holds a {config.get('family')!r} model; to-hf converts decoder_lm only"
        )
    cfg = DecoderLMConfig.from_dict(config["model"])
    hf_cfg = config_to_hf(cfg)
    hf_cfg["torch_dtype"] = dtype
    sd = state_dict_to_hf(model.state_dict(), cfg)
    sd = {k: v.detach().to(DTYPES[dtype]).clone() for k, v in sd.items()}  # own buffers: safetensors needs it

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n", encoding="utf-8")
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(tmp)
            roles = {r: tokenizer.roles[r] for r in ("bos", "eos", "pad", "unk") if r in tokenizer.roles}
            tok_cfg = {
                "tokenizer_class": "PreTrainedTokenizerFast",
                **{f"{r}_token": t for r, t in roles.items()},
            }
            (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# ---------------------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gensys convert",
        description="Convert GPT-2 / Llama decoder LMs between Hugging Face and gensys formats.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = p.add_subparsers(dest="direction", required=True)
    a = sub.add_parser(
        "from-hf",
        help="HF directory -> gensys checkpoint",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a.add_argument("hf_dir", help="HF model directory (config.json, model.safetensors, tokenizer.json)")
    a.add_argument("out", help="gensys checkpoint directory to write")
    a.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the stored weights")
    b = sub.add_parser(
        "to-hf",
        help="gensys checkpoint -> HF directory",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    b.add_argument("ckpt", help="gensys checkpoint directory (family decoder_lm)")
    b.add_argument("out", help="HF model directory to write")
    b.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the stored weights")
    return p


def convert_main(argv: list[str]) -> int:
    """`gensys convert from-hf HF_DIR OUT` / `gensys convert to-hf CKPT OUT`; returns the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2): argparse already printed the message
        return int(e.code or 0)
    try:
        if args.direction == "from-hf":
            out = from_hf(args.hf_dir, args.out, args.dtype)
        else:
            out = to_hf(args.ckpt, args.out, args.dtype)
    except (GensysError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


__all__ = [
    "config_from_hf",
    "config_to_hf",
    "convert_main",
    "from_hf",
    "gpt2_config_from_hf",
    "gpt2_state_dict_from_hf",
    "gpt2_state_dict_to_hf",
    "hf_architecture",
    "llama_config_from_hf",
    "llama_state_dict_from_hf",
    "llama_state_dict_to_hf",
    "marian_state_dict_from_hf",
    "model_from_hf",
    "seq2seq_config_from_hf",
    "seq2seq_model_from_hf",
    "state_dict_from_hf",
    "state_dict_to_hf",
    "t5_state_dict_from_hf",
    "to_hf",
]
