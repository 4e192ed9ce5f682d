"""A standard decoder-only Transformer, the baseline Hope is compared with: same presets
(d_model, n_layers, heads, vocabulary), the MLP width chosen so that the parameter counts
match Hope's within a few percent, and the same interface as `HopeForCausalLM`
(forward → `TransformerOutput(logits, loss, cache)`, `generate`, `decode_step`,
`save_pretrained` / `from_pretrained`).

One pre-norm block, for the residual stream u `[B, T, d_model]`:

    h = RMSNorm(u)
    q, k, v = h W_q, h W_k, h W_v                 per head; rotary embedding on q and k
    u = u + W_o softmax(q kᵀ / √D + causal mask) v  (torch's scaled_dot_product_attention)
    h = RMSNorm(u)
    u = u + W_down (silu(h W_gate) ⊙ h W_up)      SwiGLU

then a final RMSNorm and the language-model head (tied to the embedding by default).
No biases. The cache (`TransformerCache`) holds every layer's keys (already rotated) and
values: it grows by one entry per token, unlike Hope's constant-size recurrent state.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._pretrained import _Generate, _Pretrained

__all__ = ["TransformerConfig", "TransformerCache", "TransformerModel",
           "TransformerForCausalLM", "TransformerOutput"]


# ------------------------------------------------------------------------------------ config
@dataclass
class TransformerConfig:
    """The baseline's hyper-parameters. `num_heads · head_dim` is the attention width (default
    head_dim = d_model / num_heads, even for the rotary embedding); `mlp_hidden` is the SwiGLU
    width (default 8/3 · d_model rounded up to a multiple of 64)."""
    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    num_heads: int = 4
    head_dim: Optional[int] = None
    mlp_hidden: Optional[int] = None
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02
    tie_embeddings: bool = True

    def __post_init__(self):
        def pos_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TransformerConfig: {name} must be an int >= 1, got {v!r}")
        for name in ("vocab_size", "d_model", "n_layers", "num_heads"):
            pos_int(name)
        if self.head_dim is None:
            if self.d_model % self.num_heads:
                raise ValueError(f"TransformerConfig: num_heads ({self.num_heads}) must divide "
                                 f"d_model ({self.d_model}), or give head_dim")
            self.head_dim = self.d_model // self.num_heads
        pos_int("head_dim")
        if self.head_dim % 2:
            raise ValueError(f"TransformerConfig: head_dim must be even (rotary embedding), "
                             f"got {self.head_dim}")
        if self.mlp_hidden is None:
            self.mlp_hidden = 64 * math.ceil(8 * self.d_model / 3 / 64)
        pos_int("mlp_hidden")
        for name in ("rope_theta", "norm_eps", "init_std"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 \
                    or not math.isfinite(v):
                raise ValueError(f"TransformerConfig: {name} must be a finite number > 0, "
                                 f"got {v!r}")
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"TransformerConfig: tie_embeddings must be true or false, got "
                             f"{self.tie_embeddings!r}")

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.head_dim

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TransformerConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TransformerConfig: unknown fields {unknown}")
        return cls(**d)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "TransformerConfig":
        """Presets "tiny", "small", "125m", "350m", "760m": Hope's preset of that name (its
        vocab_size, d_model, n_layers, num_heads) with the SwiGLU width that matches Hope's
        parameter count (within 1%)."""
        if name not in PRESETS:
            raise ValueError(f"TransformerConfig.from_preset: unknown preset {name!r}; choose "
                             f"from {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


# Per layer a block has 4·d² (attention) + 3·d·mlp_hidden (SwiGLU) + 2·d (norms) parameters;
# mlp_hidden is the multiple of 8 (tiny, small) or 64 nearest to Hope's per-layer count, so
# the totals match for any vocab_size. Hope's blocks have about 9.5 d² (125m) to 15 d²
# (small) parameters, hence widths below the usual 8/3 · d_model for the large presets.
PRESETS: Dict[str, Dict[str, Any]] = {
    "tiny": dict(d_model=64, n_layers=2, num_heads=4, mlp_hidden=200),
    "small": dict(d_model=256, n_layers=4, num_heads=4, mlp_hidden=944),
    "125m": dict(vocab_size=32000, d_model=768, n_layers=12, num_heads=12, mlp_hidden=1472),
    "350m": dict(vocab_size=32000, d_model=1024, n_layers=24, num_heads=16, mlp_hidden=1728),
    "760m": dict(vocab_size=32000, d_model=1536, n_layers=24, num_heads=24, mlp_hidden=2240),
}


# ------------------------------------------------------------------------------------- cache
@dataclass
class KVCache:
    """One layer's keys (rotary embedding applied) and values, `[B, num_heads, seen, D]`."""
    k: Tensor
    v: Tensor


@dataclass
class TransformerCache:
    """Every layer's keys and values so far. Created by a forward with `use_cache=True`;
    `seen` counts the tokens consumed (the position of the next token)."""
    layers: List[KVCache] = field(default_factory=list)
    seen: int = 0

    def _map(self, fn) -> "TransformerCache":
        """A new cache with fn(tensor, batch_dim) applied to every tensor."""
        return TransformerCache([KVCache(fn(lc.k, 0), fn(lc.v, 0)) for lc in self.layers],
                                seen=self.seen)

    def tensors(self) -> List[Tensor]:
        return [t for lc in self.layers for t in (lc.k, lc.v)]

    def reorder(self, beam_idx: Tensor) -> "TransformerCache":
        """The cache of the batch rows `beam_idx` (beam search), as a new cache."""
        return self._map(lambda t, d: t.index_select(d, beam_idx.to(t.device)))

    def detach(self) -> "TransformerCache":
        """Cut the graph (truncated backpropagation through time)."""
        return self._map(lambda t, d: t.detach())

    def copy_(self, other: "TransformerCache") -> "TransformerCache":
        """Write other's tensors into this cache's tensors in place; both must hold the same
        number of tokens (a KV cache grows, so this is for caches of equal length)."""
        mine, theirs = self.tensors(), other.tensors()
        if len(mine) != len(theirs) or any(a.shape != b.shape for a, b in zip(mine, theirs)):
            raise ValueError("TransformerCache.copy_: caches of different structure or length")
        for a, b in zip(mine, theirs):
            a.copy_(b)
        self.seen = other.seen
        return self


# ------------------------------------------------------------------------------------ layers
def rotary(x: Tensor, start: int, theta: float) -> Tensor:
    """The rotary position embedding of `x [B, H, T, D]` at positions start … start + T − 1:
    the pairs (x_i, x_{i + D/2}) rotated by the angle position · theta^(−2i/D), computed in
    at least float32."""
    T, D = x.shape[-2], x.shape[-1]
    dt = torch.promote_types(x.dtype, torch.float32)
    inv = theta ** (-torch.arange(0, D, 2, device=x.device, dtype=torch.float64) / D)
    pos = torch.arange(start, start + T, device=x.device, dtype=torch.float64)
    ang = torch.outer(pos, inv)                                        # [T, D/2]
    cos, sin = ang.cos().to(dt), ang.sin().to(dt)
    x1, x2 = x.to(dt).chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.q_proj = nn.Linear(cfg.d_model, cfg.inner_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.inner_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.inner_dim, bias=False)
        self.o_proj = nn.Linear(cfg.inner_dim, cfg.d_model, bias=False)

    def forward(self, h: Tensor, past: Optional[KVCache], start: int) -> Tuple[Tensor, KVCache]:
        cfg = self.cfg
        B, T, _ = h.shape
        H, D = cfg.num_heads, cfg.head_dim

        def heads(t: Tensor) -> Tensor:
            return t.view(B, T, H, D).transpose(1, 2)                  # [B, H, T, D]

        q = rotary(heads(self.q_proj(h)), start, cfg.rope_theta)
        k = rotary(heads(self.k_proj(h)), start, cfg.rope_theta)
        v = heads(self.v_proj(h))
        P = 0
        if past is not None:
            P = past.k.shape[2]
            k = torch.cat([past.k.to(k.dtype), k], 2)
            v = torch.cat([past.v.to(v.dtype), v], 2)
        if P == 0:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif T == 1:                     # one new token sees the whole cache
            o = F.scaled_dot_product_attention(q, k, v)
        else:                            # a chunk after the cache: query i sees keys ≤ P + i
            mask = torch.arange(P + T, device=h.device)[None, :] \
                <= torch.arange(P, P + T, device=h.device)[:, None]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        o = o.transpose(1, 2).reshape(B, T, H * D)
        return self.o_proj(o), KVCache(k, v)


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, hidden, bias=False)
        self.up_proj = nn.Linear(d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d_model, bias=False)

    def forward(self, h: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.mlp_hidden)
        std = cfg.init_std
        with torch.no_grad():
            for lin in (self.attn.q_proj, self.attn.k_proj, self.attn.v_proj,
                        self.mlp.gate_proj, self.mlp.up_proj):
                nn.init.normal_(lin.weight, 0.0, std)
            # the residual writes, scaled by depth (as Hope's o_proj)
            for lin in (self.attn.o_proj, self.mlp.down_proj):
                nn.init.normal_(lin.weight, 0.0, std / math.sqrt(2 * cfg.n_layers))

    def forward(self, u: Tensor, past: Optional[KVCache], start: int
                ) -> Tuple[Tensor, KVCache]:
        a, kv = self.attn(self.attn_norm(u), past, start)
        u = u + a
        return u + self.mlp(self.mlp_norm(u)), kv


# ------------------------------------------------------------------------------------ models
@dataclass
class TransformerOutput:
    logits: Tensor
    loss: Optional[Tensor] = None
    cache: Optional[TransformerCache] = None
    hidden_states: Optional[Tensor] = None


class TransformerModel(nn.Module, _Pretrained):
    """Embedding, Transformer blocks, final norm: `forward(input_ids [B, T]) -> hidden
    [B, T, d]`."""
    config_class, model_type, model_name = TransformerConfig, "transformer", "Transformer"

    def __init__(self, config: TransformerConfig):
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"TransformerModel: config must be a TransformerConfig, got "
                            f"{type(config).__name__}")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        nn.init.normal_(self.embed.weight, 0.0, config.init_std)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)

    def forward(self, input_ids: Tensor, cache: Optional[TransformerCache] = None,
                use_cache: bool = False) -> Tuple[Tensor, Optional[TransformerCache]]:
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 \
                or input_ids.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"TransformerModel: input_ids must be an int tensor [B, T], got "
                             f"{getattr(input_ids, 'shape', input_ids)!r}")
        if input_ids.device.type == "cpu" and input_ids.numel() and (int(input_ids.min()) < 0
                                  or int(input_ids.max()) >= self.config.vocab_size):
            raise ValueError(f"TransformerModel: token ids must be in [0, vocab_size = "
                             f"{self.config.vocab_size})")
        if cache is not None:
            if len(cache.layers) != len(self.blocks):
                raise ValueError(f"TransformerModel: cache has {len(cache.layers)} layers, the "
                                 f"model {len(self.blocks)}")
            if cache.layers and cache.layers[0].k.shape[0] != input_ids.shape[0]:
                raise ValueError(f"TransformerModel: cache has batch {cache.layers[0].k.shape[0]}"
                                 f", input_ids {input_ids.shape[0]}")
        start = cache.seen if cache is not None else 0
        u = self.embed(input_ids)
        new = TransformerCache(seen=start + input_ids.shape[1]) if use_cache else None
        for i, block in enumerate(self.blocks):
            u, kv = block(u, cache.layers[i] if cache is not None else None, start)
            if use_cache:
                new.layers.append(kv)
        return self.norm(u), new


class TransformerForCausalLM(nn.Module, _Pretrained, _Generate):
    """The Transformer with a language-model head: `forward(input_ids, labels=None,
    cache=None, use_cache=False) -> TransformerOutput(logits, loss, cache)`; labels are the
    input ids (shifted inside, -100 ignored). `generate(input_ids, max_new_tokens,
    temperature=1.0, top_k=None, generator=None)`: sampled continuation, one token at a time
    through the KV cache (temperature 0: greedy)."""
    config_class, model_type, model_name = TransformerConfig, "transformer", "Transformer"

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.model = TransformerModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed.weight
        else:
            nn.init.normal_(self.lm_head.weight, 0.0, config.init_std)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed

    def forward(self, input_ids: Tensor, labels: Optional[Tensor] = None,
                cache: Optional[TransformerCache] = None, use_cache: bool = False
                ) -> TransformerOutput:
        hidden, new = self.model(input_ids, cache, use_cache)
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(f"TransformerForCausalLM: labels must have input_ids' shape "
                                 f"{tuple(input_ids.shape)}, got {tuple(labels.shape)}")
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return TransformerOutput(logits=logits, loss=loss, cache=new)

    @torch.no_grad()
    def decode_step(self, input_ids: Tensor, cache: TransformerCache) -> Tensor:
        """One token per row (`input_ids [B, 1]`): `cache` is advanced in place (its layers
        now hold the longer keys and values; unlike `HopeCache` the tensors are new ones, a
        KV cache grows, so this call cannot be captured by a CUDA graph). Returns the logits
        `[B, 1, vocab]`."""
        out = self(input_ids, cache=cache, use_cache=True)
        cache.layers, cache.seen = out.cache.layers, out.cache.seen
        return out.logits
