"""Hope (DESIGN §5; paper §8, eq. 83–97): a self-modifying sequence model followed by a
Continuum Memory System, assembled from the nlcore ops.

One block, for the residual stream u `[B, T, d_model]`:

    h   = RMSNorm(u)
    q   = L2norm(silu(conv(h W_q)))               per head, the main memory's query
    x   = L2norm(silu(conv(h W_x)))               per head, the self-modifying memories' input
    k, v, η, g = self_modifying_scan(x)           (M_k, M_v, M_η, M_α; DESIGN §3.3)
    o   = M_main(q)                               linear DGD memory (read before write) or MLP
    u   = u + W_o o
    u   = CMS(u)                                  pre-norm residual levels, growing chunk sizes

Ablations (the paper's table): `dgd_erase=False` (no DGD erase anywhere; the linear memory
becomes a gated Hebbian memory), `momentum=0` (no momentum in the self-modifying and main
memories; the CMS levels have their own `cms_momentum`, default 0), `retention=False` (the main
memory and the CMS keep everything: g = 0 there; the self-modifying memories keep their own
M_α gate, which also produces g), `use_cms=False` (a plain pre-norm MLP instead of the CMS),
`static_k` / `static_v` (the main memory's keys / values from a static projection of h
instead of M_k / M_v; the self-modifying memories themselves are unchanged).

The cache (`HopeCache`) holds every state: conv tails, the self-modifying memories'
`MLPMemoryState`, the main memory's state (DGD matrix or `MLPMemoryState`) and the CMS levels'
states, each with its open chunk — O(1) memory per token, and decoding token by token gives
the full forward's logits for any length.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._state import MLPMemoryState
from ..nn.cms import CMS
from ..ops import dgd, memory_mlp_scan, self_modifying_scan
from ._pretrained import CONFIG_NAME, SAFETENSORS_NAME, TORCH_NAME, _Generate, _Pretrained

__all__ = ["HopeConfig", "HopeCache", "HopeModel", "HopeForCausalLM", "HopeOutput"]

MAIN_MEMORIES = ("linear", "mlp")


# ------------------------------------------------------------------------------------ config
@dataclass
class HopeConfig:
    """Hope's hyper-parameters. Widths: `num_heads · head_dim` is the memories' width (default
    head_dim = d_model / num_heads). Chunk sizes are semantic (update frequencies)."""
    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    num_heads: int = 4
    head_dim: Optional[int] = None
    main_memory: str = "linear"          # "linear" (DGD) | "mlp" (memory_mlp_scan)
    self_mod_chunk_size: int = 8          # C of M_k, M_v, M_η, M_α
    self_mod_hidden_mult: int = 2         # their F = mult · head_dim
    main_chunk_size: int = 16             # C of the MLP main memory
    main_hidden_mult: int = 4             # its F = mult · head_dim
    eta_max: Optional[float] = None       # default 1 / self_mod_chunk_size
    momentum: float = 0.9                 # of the self-modifying and main memories
    cms_momentum: float = 0.0             # of the CMS levels (0.9 diverged in training)
    cms_chunk_sizes: Tuple[int, ...] = (16, 64)
    cms_hidden_mult: float = 4.0
    cms_num_heads: Optional[int] = None   # default num_heads
    conv_size: int = 4
    norm_eps: float = 1e-6
    init_std: float = 0.02
    retention_bias: float = 5.0           # b_α at init: sigmoid(5) ≈ 0.993 per token
    tie_embeddings: bool = True
    # ablations
    dgd_erase: bool = True
    retention: bool = True
    use_cms: bool = True
    static_k: bool = False
    static_v: bool = False
    checkpoint_every: int = 16

    def __post_init__(self):
        def pos_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"HopeConfig: {name} must be an int >= 1, got {v!r}")
        for name in ("vocab_size", "d_model", "n_layers", "num_heads", "self_mod_chunk_size",
                     "self_mod_hidden_mult", "main_chunk_size", "main_hidden_mult", "conv_size",
                     "checkpoint_every"):
            pos_int(name)
        if self.head_dim is None:
            if self.d_model % self.num_heads:
                raise ValueError(f"HopeConfig: num_heads ({self.num_heads}) must divide d_model "
                                 f"({self.d_model}), or give head_dim")
            self.head_dim = self.d_model // self.num_heads
        pos_int("head_dim")
        if self.main_memory not in MAIN_MEMORIES:
            raise ValueError(f"HopeConfig: main_memory must be one of {MAIN_MEMORIES}, got "
                             f"{self.main_memory!r}")
        self.cms_chunk_sizes = tuple(self.cms_chunk_sizes)
        for c in self.cms_chunk_sizes:
            if isinstance(c, bool) or not isinstance(c, int) or c < 1:
                raise ValueError(f"HopeConfig: cms_chunk_sizes must be ints >= 1, got "
                                 f"{self.cms_chunk_sizes!r}")
        if self.use_cms and not self.cms_chunk_sizes:
            raise ValueError("HopeConfig: use_cms=True needs at least one CMS level "
                             "(cms_chunk_sizes)")
        if self.cms_num_heads is None:
            self.cms_num_heads = self.num_heads
        pos_int("cms_num_heads")
        if self.d_model % self.cms_num_heads:
            raise ValueError(f"HopeConfig: cms_num_heads ({self.cms_num_heads}) must divide "
                             f"d_model ({self.d_model})")
        if self.eta_max is None:
            self.eta_max = 1.0 / self.self_mod_chunk_size
        for name, low in (("eta_max", 0.0), ("init_std", 0.0), ("norm_eps", 0.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > low \
                    or not math.isfinite(v):
                raise ValueError(f"HopeConfig: {name} must be a finite number > {low}, got {v!r}")
        for name in ("momentum", "cms_momentum"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ValueError(f"HopeConfig: {name} must be in [0, 1), got {v!r}")

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.head_dim

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["cms_chunk_sizes"] = list(self.cms_chunk_sizes)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "HopeConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"HopeConfig: unknown fields {unknown}")
        return cls(**d)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "HopeConfig":
        """Presets: "tiny" (trains on 2 CPU cores in minutes), "small", and the paper's size
        classes "125m", "350m", "760m" (byte vocabulary unless vocab_size is overridden)."""
        if name not in PRESETS:
            raise ValueError(f"HopeConfig.from_preset: unknown preset {name!r}; choose from "
                             f"{sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: Dict[str, Dict[str, Any]] = {
    "tiny": dict(d_model=64, n_layers=2, num_heads=4, self_mod_chunk_size=8,
                 main_chunk_size=8, cms_chunk_sizes=(8, 32), cms_hidden_mult=2.0),
    "small": dict(d_model=256, n_layers=4, num_heads=4, self_mod_chunk_size=8,
                  main_chunk_size=16, cms_chunk_sizes=(16, 64)),
    "125m": dict(vocab_size=32000, d_model=768, n_layers=12, num_heads=12,
                 self_mod_chunk_size=16, main_chunk_size=16, cms_chunk_sizes=(16, 256)),
    "350m": dict(vocab_size=32000, d_model=1024, n_layers=24, num_heads=16,
                 self_mod_chunk_size=16, main_chunk_size=16, cms_chunk_sizes=(16, 256)),
    "760m": dict(vocab_size=32000, d_model=1536, n_layers=24, num_heads=24,
                 self_mod_chunk_size=16, main_chunk_size=16, cms_chunk_sizes=(16, 256)),
}


# ------------------------------------------------------------------------------------- cache
@dataclass
class LayerCache:
    conv_q: Optional[Tensor] = None       # [B, conv_size − 1, inner] the last inputs
    conv_x: Optional[Tensor] = None
    self_mod: Optional[MLPMemoryState] = None
    main: Union[None, Tensor, MLPMemoryState] = None
    cms: Optional[List[Optional[MLPMemoryState]]] = None


def _state_batch_dim(state_field: str, self_mod: bool) -> int:
    return 1 if self_mod and state_field in ("w_in", "w_out", "p_in", "p_out", "acc_in",
                                             "acc_out") else 0


@dataclass
class HopeCache:
    """Every recurrent state of a `HopeModel`, per layer (see the module docstring). Created
    by a forward with `use_cache=True`; `seen` counts the tokens consumed."""
    layers: List[LayerCache] = field(default_factory=list)
    seen: int = 0

    def _map(self, fn):
        """A new cache with fn(tensor, batch_dim) applied to every tensor."""
        out = HopeCache(seen=self.seen)
        for lc in self.layers:
            new = LayerCache()
            new.conv_q = None if lc.conv_q is None else fn(lc.conv_q, 0)
            new.conv_x = None if lc.conv_x is None else fn(lc.conv_x, 0)
            if lc.self_mod is not None:
                new.self_mod = MLPMemoryState(*[
                    fn(t, _state_batch_dim(n, True)) for n, t in zip(MLPMemoryState._fields,
                                                                      lc.self_mod)])
            if isinstance(lc.main, MLPMemoryState):
                new.main = MLPMemoryState(*[fn(t, 0) for t in lc.main])
            elif lc.main is not None:
                new.main = fn(lc.main, 0)
            if lc.cms is not None:
                new.cms = [None if s is None else MLPMemoryState(*[fn(t, 0) for t in s])
                           for s in lc.cms]
            out.layers.append(new)
        return out

    def tensors(self) -> List[Tensor]:
        ts: List[Tensor] = []
        self._map(lambda t, d: ts.append(t) or t)
        return ts

    def reorder(self, beam_idx: Tensor) -> "HopeCache":
        """The cache of the batch rows `beam_idx` (beam search), as a new cache."""
        return self._map(lambda t, d: t.index_select(d, beam_idx.to(t.device)))

    def detach(self) -> "HopeCache":
        """Cut the graph (truncated backpropagation through time)."""
        return self._map(lambda t, d: t.detach())

    def copy_(self, other: "HopeCache") -> "HopeCache":
        """Write other's tensors into this cache's tensors in place (static decode buffers)."""
        mine, theirs = self.tensors(), other.tensors()
        if len(mine) != len(theirs):
            raise ValueError("HopeCache.copy_: caches of different structure")
        for a, b in zip(mine, theirs):
            a.copy_(b)
        self.seen = other.seen
        return self


# ------------------------------------------------------------------------------------ layers
class ShortConv(nn.Module):
    """Depthwise causal convolution over time (window W) followed by SiLU; the cache holds
    the last W − 1 inputs."""

    def __init__(self, dim: int, window: int):
        super().__init__()
        self.window = window
        self.weight = nn.Parameter(torch.empty(dim, 1, window))
        self.bias = nn.Parameter(torch.zeros(dim))
        nn.init.uniform_(self.weight, -window ** -0.5, window ** -0.5)

    def forward(self, x: Tensor, tail: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        B, T, C = x.shape
        W = self.window
        if tail is None:
            tail = x.new_zeros(B, W - 1, C)
        full = torch.cat([tail.to(x.dtype), x], 1)                        # [B, W−1+T, C]
        y = F.conv1d(full.transpose(1, 2), self.weight.to(x.dtype), self.bias.to(x.dtype),
                     groups=C).transpose(1, 2)
        return F.silu(y), full[:, full.shape[1] - (W - 1):]


class MLP(nn.Module):
    """A plain pre-norm SiLU MLP block (the use_cms=False ablation)."""

    def __init__(self, d_model: int, hidden: int, eps: float):
        super().__init__()
        self.norm = nn.RMSNorm(d_model, eps=eps)
        self.fc1 = nn.Linear(d_model, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, d_model, bias=False)

    def forward(self, u: Tensor) -> Tensor:
        return u + self.fc2(F.silu(self.fc1(self.norm(u))))


class HopeBlock(nn.Module):
    def __init__(self, cfg: HopeConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        H, D, inner = cfg.num_heads, cfg.head_dim, cfg.inner_dim
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.q_proj = nn.Linear(cfg.d_model, inner, bias=False)
        self.x_proj = nn.Linear(cfg.d_model, inner, bias=False)
        self.conv_q = ShortConv(inner, cfg.conv_size)
        self.conv_x = ShortConv(inner, cfg.conv_size)
        Fs = cfg.self_mod_hidden_mult * D
        # M_k, M_v, M_η, M_α: initial weights meta-learned by the outer optimizer
        self.sm_w_in = nn.Parameter(torch.empty(4, H, Fs, D))
        self.sm_w_out = nn.Parameter(torch.empty(4, H, D, Fs))
        self.w_eta = nn.Parameter(torch.empty(H, D))
        self.w_alpha = nn.Parameter(torch.empty(H, D))
        self.b_eta = nn.Parameter(torch.zeros(H))
        self.b_alpha = nn.Parameter(torch.full((H,), cfg.retention_bias))
        if cfg.main_memory == "mlp":
            Fm = cfg.main_hidden_mult * D
            self.main_w_in = nn.Parameter(torch.empty(H, Fm, D))
            self.main_w_out = nn.Parameter(torch.empty(H, D, Fm))
        self.k_proj = nn.Linear(cfg.d_model, inner, bias=False) if cfg.static_k else None
        self.v_proj = nn.Linear(cfg.d_model, inner, bias=False) if cfg.static_v else None
        self.o_proj = nn.Linear(inner, cfg.d_model, bias=False)
        if cfg.use_cms:
            self.cms = CMS(cfg.d_model, cfg.cms_num_heads, cfg.cms_chunk_sizes,
                           hidden_mult=cfg.cms_hidden_mult, momentum=cfg.cms_momentum,
                           dgd_erase=cfg.dgd_erase, retention=cfg.retention, norm="rmsnorm",
                           checkpoint_every=cfg.checkpoint_every)
            self.mlp = None
        else:
            self.cms = None
            self.mlp = MLP(cfg.d_model, int(cfg.cms_hidden_mult * cfg.d_model), cfg.norm_eps)
        self.reset_parameters(layer)

    def reset_parameters(self, layer: int) -> None:
        cfg = self.cfg
        D = cfg.head_dim
        std = cfg.init_std
        with torch.no_grad():
            self.sm_w_in.uniform_(-D ** -0.5, D ** -0.5)
            self.sm_w_out.normal_(0.0, std)   # M(x) ≈ x at init: k ∝ x, v ≈ x
            self.w_eta.normal_(0.0, std)
            self.w_alpha.normal_(0.0, std)
            if self.cfg.main_memory == "mlp":
                self.main_w_in.uniform_(-D ** -0.5, D ** -0.5)
                self.main_w_out.normal_(0.0, std)
            nn.init.normal_(self.o_proj.weight, 0.0, std / math.sqrt(2 * cfg.n_layers))

    def forward(self, u: Tensor, cache: Optional[LayerCache], use_cache: bool
                ) -> Tuple[Tensor, Optional[LayerCache]]:
        cfg = self.cfg
        B, T, _ = u.shape
        H, D = cfg.num_heads, cfg.head_dim
        c = cache or LayerCache()
        new = LayerCache() if use_cache else None
        h = self.norm(u)
        q, tail_q = self.conv_q(self.q_proj(h), c.conv_q)
        x, tail_x = self.conv_x(self.x_proj(h), c.conv_x)
        q = F.normalize(q.view(B, T, H, D), dim=-1, eps=1e-6)
        # unit rows: the memories' in-context descent is stable for ‖x‖ ≲ 1 at eta_max = 1/C
        # (it diverged for per-head norms of 2–3)
        x = F.normalize(x.view(B, T, H, D), dim=-1, eps=1e-6)
        weights = (self.sm_w_in, self.sm_w_out) if c.self_mod is None else (None, None)
        k, v, eta, g, sm_state = self_modifying_scan(
            x, *weights, self.w_eta, self.w_alpha, cfg.self_mod_chunk_size,
            eta_max=cfg.eta_max, b_eta=self.b_eta, b_alpha=self.b_alpha,
            momentum=cfg.momentum, dgd_erase=cfg.dgd_erase, initial_state=c.self_mod,
            output_final_state=use_cache, checkpoint_every=cfg.checkpoint_every)
        if self.k_proj is not None:
            k = F.normalize(self.k_proj(h).view(B, T, H, D), dim=-1, eps=1e-6).to(k.dtype)
        if self.v_proj is not None:
            v = self.v_proj(h).view(B, T, H, D).to(v.dtype)
        g_main = g if cfg.retention else None
        if cfg.main_memory == "linear":
            erase = eta if cfg.dgd_erase else torch.zeros_like(eta)
            o, main_state = dgd(q.to(k.dtype), k, v, eta, g=g_main, erase=erase, scale=1.0,
                                initial_state=c.main, output_final_state=use_cache,
                                read="before")
        else:
            mw = (self.main_w_in, self.main_w_out) if c.main is None else (None, None)
            o, main_state = memory_mlp_scan(
                q.to(k.dtype), k, v, eta, *mw, cfg.main_chunk_size, g=g_main,
                momentum=cfg.momentum, self_target=True, dgd_erase=cfg.dgd_erase,
                initial_state=c.main, output_final_state=use_cache,
                checkpoint_every=cfg.checkpoint_every)
        u = u + self.o_proj(o.reshape(B, T, H * D).to(u.dtype))
        if self.cms is not None:
            if use_cache:
                u, cms_state = self.cms(u, c.cms, return_state=True)
            else:
                u = self.cms(u, c.cms)
        else:
            u, cms_state = self.mlp(u), None
        if use_cache:
            new.conv_q, new.conv_x = tail_q, tail_x
            new.self_mod, new.main = sm_state, main_state
            new.cms = cms_state if self.cms is not None else None
        return u, new


# ------------------------------------------------------------------------------------ models
@dataclass
class HopeOutput:
    logits: Tensor
    loss: Optional[Tensor] = None
    cache: Optional[HopeCache] = None
    hidden_states: Optional[Tensor] = None


class HopeModel(nn.Module, _Pretrained):
    """Embedding, Hope blocks, final norm: `forward(input_ids [B, T]) -> hidden [B, T, d]`."""
    config_class, model_type, model_name = HopeConfig, "hope", "Hope"

    def __init__(self, config: HopeConfig):
        super().__init__()
        if not isinstance(config, HopeConfig):
            raise TypeError(f"HopeModel: config must be a HopeConfig, got "
                            f"{type(config).__name__}")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        nn.init.normal_(self.embed.weight, 0.0, config.init_std)
        self.blocks = nn.ModuleList(HopeBlock(config, i) for i in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)

    def forward(self, input_ids: Tensor, cache: Optional[HopeCache] = None,
                use_cache: bool = False) -> Tuple[Tensor, Optional[HopeCache]]:
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 \
                or input_ids.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"HopeModel: input_ids must be an int tensor [B, T], got "
                             f"{getattr(input_ids, 'shape', input_ids)!r}")
        if input_ids.device.type == "cpu" and input_ids.numel() and (int(input_ids.min()) < 0
                                  or int(input_ids.max()) >= self.config.vocab_size):
            raise ValueError(f"HopeModel: token ids must be in [0, vocab_size = "
                             f"{self.config.vocab_size})")
        if cache is not None and len(cache.layers) != len(self.blocks):
            raise ValueError(f"HopeModel: cache has {len(cache.layers)} layers, the model "
                             f"{len(self.blocks)}")
        u = self.embed(input_ids)
        new = HopeCache(seen=(cache.seen if cache else 0) + input_ids.shape[1]) \
            if use_cache else None
        for i, block in enumerate(self.blocks):
            u, lc = block(u, cache.layers[i] if cache else None, use_cache)
            if use_cache:
                new.layers.append(lc)
        return self.norm(u), new


class HopeForCausalLM(nn.Module, _Pretrained, _Generate):
    """Hope with a language-model head: `forward(input_ids, labels=None, cache=None,
    use_cache=False) -> HopeOutput(logits, loss, cache)`; labels are the input ids (shifted
    inside, -100 ignored). `generate(input_ids, max_new_tokens, temperature=1.0, top_k=None,
    generator=None)`: sampled continuation, one token at a time through the recurrent
    cache (temperature 0: greedy)."""
    config_class, model_type, model_name = HopeConfig, "hope", "Hope"

    def __init__(self, config: HopeConfig):
        super().__init__()
        self.config = config
        self.model = HopeModel(config)
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
                cache: Optional[HopeCache] = None, use_cache: bool = False) -> HopeOutput:
        hidden, new = self.model(input_ids, cache, use_cache)
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(f"HopeForCausalLM: labels must have input_ids' shape "
                                 f"{tuple(input_ids.shape)}, got {tuple(labels.shape)}")
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return HopeOutput(logits=logits, loss=loss, cache=new)

    @torch.no_grad()
    def decode_step(self, input_ids: Tensor, cache: HopeCache) -> Tensor:
        """One token per row (`input_ids [B, 1]`) with a static-shape cache: the new states are
        written into `cache`'s tensors in place (fixed addresses, so a CUDA graph can capture
        this call). Returns the logits `[B, 1, vocab]`."""
        out = self(input_ids, cache=cache, use_cache=True)
        cache.copy_(out.cache)
        return out.logits
