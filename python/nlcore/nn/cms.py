"""`nlcore.nn.CMS`: the Continuum Memory System, a chain of MLP-memory levels (DESIGN §3.2).

A level is `nlcore.ops.memory_mlp_scan` on its input u `[B, T, d_model]` split into H heads of
D = d_model / H, with learned static projections (all per token, per head):

    x = u                     (or norm(u) with `norm=`)   the read: y_t = M_c(x_t)
    k = key_norm(W_k x)       keys of the inner loss
    v = W_v x                 targets of the inner loss
    η = η_max · sigmoid(W_η x + b_η)
    g = logsigmoid(W_g x + b_g) / C                          (retention=True; else no decay)

and initial memory weights w_in `[H, F, D]`, w_out `[H, D, F]` (nn.Parameters shared by every
sequence of the batch, F = hidden_size / H), which the outer optimizer meta-learns through
the whole scan. A CMS applies its levels in order, `y = M^(L)(… M^(1)(u))`, each updating
once per chunk of its own C_ℓ tokens (typically growing 4–16× per level).

Choices this module makes (the op itself is agnostic):

* Keys are L2-normalized per head and scaled by √D (`key_norm=True`), i.e. put on the scale
  of an RMS-normalized input, which is what the memory reads: what the memory learns at k is
  read back at x = u on the same scale. ‖k_t‖² = D.
* The default η_max is 1 / (C·D) per level: then Σ_{t in chunk} η_t ‖k_t‖² < 1, so the DGD
  erase factor (I − Σ η_t k_t k_tᵀ) on w_in has eigenvalues in (0, 1] whatever the keys —
  at most one full step per update, for any chunk size. Pass `eta_max` to choose otherwise.
* The retention gate is divided by C so that it is a per-update (not per-token) retention,
  independent of the chunk size: a full chunk decays the weights by the geometric mean of
  sigmoid(W_g x + b_g) over its tokens. b_g starts at log(99) (retention 0.99 per update).
* `residual` is the memory's form, `M(x) = x + W_out σ(W_in x)`, which also shapes the inner
  loss (the memory predicts v from k through the residual). With `norm=` the level is a
  pre-norm residual block, `y = u + W_out σ(W_in norm(u))`; without, y = M(u).
* Heads mix only through the dense k/v/η/g projections; the read of a head sees its own D
  slice. num_heads=1 gives one dense MLP memory per sequence.

Drop-in use: `CMS(..., residual=False)` with one level computes exactly `MLP(u)` at η = 0 and
replaces the `mlp` of a block `h + mlp(ln(h))`; `CMS(..., norm="layernorm")` (residual on)
replaces the whole sub-block. `from_mlp` loads an existing MLP into a level (see
`CMSLevel.load_mlp_`).

Streaming: `forward(u, state, return_state=True)` returns the per-level `MLPMemoryState`s
(weights, momenta and the open chunk's accumulators), so a sequence fed in pieces — cut
anywhere, also inside a chunk — gives the same outputs and state as one call. The returned
state stays attached to the graph; detach it for truncated backpropagation through time.
"""
from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._state import MLPMemoryState
from ..ops import memory_mlp_scan
from ..ops.memory_mlp import CHECKPOINT_EVERY
from ..reference.memory_mlp import ACTIVATIONS, OBJECTIVES

__all__ = ["CMSLevel", "CMS"]

_NORMS = (None, "rmsnorm", "layernorm")
_RETENTION_BIAS = math.log(99.0)  # sigmoid(b) = 0.99: retention per update at init

State = List[Optional[MLPMemoryState]]


# ------------------------------------------------------------------ validation helpers


def _pos_int(where: str, name: str, x: Any) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x < 1:
        raise ValueError(f"{where}: {name} must be an int >= 1, got {x!r}")
    return x


def _number(where: str, name: str, x: Any, low: float = 0.0) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) \
            or x < low:
        raise ValueError(f"{where}: {name} must be a finite number >= {low}, got {x!r}")
    return float(x)


def _check_choices(where: str, activation: str, objective: str, norm: Optional[str]) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"{where}: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"{where}: objective must be one of {OBJECTIVES}, got {objective!r}")
    if norm not in _NORMS:
        raise ValueError(f"{where}: norm must be one of {_NORMS}, got {norm!r}")


def _heads(where: str, d_model: Any, num_heads: Any) -> int:
    _pos_int(where, "d_model", d_model)
    _pos_int(where, "num_heads", num_heads)
    if d_model % num_heads:
        raise ValueError(f"{where}: d_model ({d_model}) must be divisible by num_heads "
                         f"({num_heads})")
    return d_model // num_heads


def _per_level(where: str, name: str, value: Any, n: int) -> list:
    """A scalar for every level, or a sequence with one entry per level."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{where}: {name} has {len(value)} entries for {n} levels "
                             f"(give one per level, or a single value)")
        return list(value)
    return [value] * n


def _chunk_sizes(where: str, chunk_sizes: Any) -> Tuple[int, ...]:
    if isinstance(chunk_sizes, int) and not isinstance(chunk_sizes, bool):
        chunk_sizes = (chunk_sizes,)
    if not isinstance(chunk_sizes, (list, tuple)) or len(chunk_sizes) == 0:
        raise ValueError(f"{where}: chunk_sizes must be a non-empty sequence of ints >= 1 "
                         f"(one per level), got {chunk_sizes!r}")
    for i, c in enumerate(chunk_sizes):
        _pos_int(where, f"chunk_sizes[{i}]", c)
    return tuple(chunk_sizes)


def _check_u(where: str, u: Any, d_model: int) -> None:
    if not isinstance(u, Tensor):
        raise TypeError(f"{where}: input must be a torch.Tensor, got {type(u).__name__}")
    if u.dim() != 3 or u.shape[-1] != d_model:
        raise ValueError(f"{where}: input must be [B, T, d_model={d_model}], got "
                         f"{list(u.shape)}")


# ------------------------------------------------------------------ one level


class CMSLevel(nn.Module):
    """One CMS level: an MLP memory per sequence and head, trained in context once every
    `chunk_size` tokens by `nlcore.ops.memory_mlp_scan` (see the module docstring).

    Args:
        d_model: width of the input and output. num_heads: H, dividing d_model (D = d_model/H).
        chunk_size: C, tokens per in-context update (the level's frequency), an int >= 1.
        hidden_size: total hidden width of the memory MLP, summed over heads (F = hidden_size/H
            per head); default `hidden_mult * d_model`.
        eta_max: upper bound of the learning rate η; default 1 / (C·D) (see module docstring).
        momentum, activation ("silu" | "gelu"), objective ("l2" | "dot"), self_target,
            dgd_erase, residual, checkpoint_every: passed to `memory_mlp_scan`.
        retention: learn a per-head log-retention gate g (else the weights never decay).
        key_norm: L2-normalize k per head and scale by √D.
        norm: None, "rmsnorm" or "layernorm": normalize the input the level reads and keys
            (a pre-norm residual block when residual=True).
        device, dtype: of the parameters, as for torch.nn modules.

    Shapes: `forward(u [B, T, d_model]) -> [B, T, d_model]` in u's dtype.
    """

    def __init__(self, d_model: int, num_heads: int, chunk_size: int,
                 hidden_size: Optional[int] = None, *, hidden_mult: float = 4.0,
                 eta_max: Optional[float] = None, momentum: float = 0.0,
                 activation: str = "silu", objective: str = "l2", self_target: bool = False,
                 dgd_erase: bool = True, retention: bool = False, residual: bool = True,
                 key_norm: bool = True, norm: Optional[str] = None,
                 checkpoint_every: int = CHECKPOINT_EVERY, device=None, dtype=None):
        super().__init__()
        where = type(self).__name__
        D = _heads(where, d_model, num_heads)
        _pos_int(where, "chunk_size", chunk_size)
        _pos_int(where, "checkpoint_every", checkpoint_every)
        _check_choices(where, activation, objective, norm)
        if hidden_size is None:
            width = _number(where, "hidden_mult", hidden_mult) * d_model
            if width != int(width) or width < 1:
                raise ValueError(f"{where}: hidden_mult * d_model = {width} is not a positive "
                                 f"int; pass hidden_size")
            hidden_size = int(width)
        _pos_int(where, "hidden_size", hidden_size)
        if hidden_size % num_heads:
            raise ValueError(f"{where}: hidden_size ({hidden_size}) must be divisible by "
                             f"num_heads ({num_heads})")
        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, D
        self.chunk_size, self.hidden_size = chunk_size, hidden_size
        self.eta_max = 1.0 / (chunk_size * D) if eta_max is None else \
            _number(where, "eta_max", eta_max)
        self.momentum = _number(where, "momentum", momentum)
        self.activation, self.objective, self.norm_kind = activation, objective, norm
        self.self_target, self.dgd_erase = bool(self_target), bool(dgd_erase)
        self.residual, self.key_norm = bool(residual), bool(key_norm)
        self.checkpoint_every = checkpoint_every

        fk = dict(device=device, dtype=dtype)
        Fh = hidden_size // num_heads
        self.w_in = nn.Parameter(torch.empty(num_heads, Fh, D, **fk))    # [H, F, D]
        self.w_out = nn.Parameter(torch.empty(num_heads, D, Fh, **fk))   # [H, D, F]
        self.k_proj = nn.Linear(d_model, d_model, bias=False, **fk)
        self.v_proj = nn.Linear(d_model, d_model, bias=False, **fk)
        self.eta_proj = nn.Linear(d_model, num_heads, **fk)
        self.gate_proj = nn.Linear(d_model, num_heads, **fk) if retention else None
        if norm == "rmsnorm":
            self.norm = nn.RMSNorm(d_model, eps=1e-6, **fk)
        elif norm == "layernorm":
            self.norm = nn.LayerNorm(d_model, **fk)
        else:
            self.norm = None
        self.reset_parameters()

    @property
    def retention(self) -> bool:
        return self.gate_proj is not None

    def reset_parameters(self) -> None:
        """Memory weights as a fresh `nn.Linear` pair per head (uniform ±1/√fan_in);
        η bias 0 (η = η_max/2); retention bias log 99."""
        with torch.no_grad():
            self.w_in.uniform_(-self.head_dim ** -0.5, self.head_dim ** -0.5)
            f = self.w_out.shape[-1]
            self.w_out.uniform_(-f ** -0.5, f ** -0.5)
            for m in (self.k_proj, self.v_proj, self.eta_proj, self.gate_proj, self.norm):
                if m is not None:
                    m.reset_parameters()
            nn.init.zeros_(self.eta_proj.bias)
            if self.gate_proj is not None:
                nn.init.constant_(self.gate_proj.bias, _RETENTION_BIAS)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, "
                f"chunk_size={self.chunk_size}, hidden_size={self.hidden_size}, "
                f"eta_max={self.eta_max:.3g}, momentum={self.momentum}, "
                f"activation={self.activation!r}, objective={self.objective!r}, "
                f"self_target={self.self_target}, dgd_erase={self.dgd_erase}, "
                f"retention={self.retention}, residual={self.residual}, "
                f"key_norm={self.key_norm}")

    def scan_inputs(self, u: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Optional[Tensor]]:
        """(x, k, v `[B, T, H, D]`, eta, g `[B, T, H]`) that the level hands the scan."""
        B, T, _ = u.shape
        H, D = self.num_heads, self.head_dim
        x = u if self.norm is None else self.norm(u)
        k = self.k_proj(x).view(B, T, H, D)
        if self.key_norm:
            k = F.normalize(k, dim=-1, eps=1e-6) * math.sqrt(D)
        v = self.v_proj(x).view(B, T, H, D)
        eta = self.eta_max * torch.sigmoid(self.eta_proj(x))
        g = None
        if self.gate_proj is not None:
            g = F.logsigmoid(self.gate_proj(x)) / self.chunk_size
        return x.reshape(B, T, H, D), k, v, eta, g

    def forward(self, u: Tensor, state: Optional[MLPMemoryState] = None, *,
                cu_seqlens: Optional[Tensor] = None, return_state: bool = False
                ) -> Union[Tensor, Tuple[Tensor, MLPMemoryState]]:
        """u `[B, T, d_model]` -> y `[B, T, d_model]` (and the final `MLPMemoryState` with
        return_state). state: where a previous call left off (None: start from w_in/w_out).
        cu_seqlens: `[N + 1]` offsets of sequences packed along T (B = 1); chunks restart at
        each sequence and the state has N rows."""
        _check_u(type(self).__name__, u, self.d_model)
        x, k, v, eta, g = self.scan_inputs(u)
        weights = (self.w_in, self.w_out) if state is None else (None, None)
        y, final = memory_mlp_scan(
            x, k, v, eta, *weights, self.chunk_size, g=g, momentum=self.momentum,
            activation=self.activation, residual=self.residual, objective=self.objective,
            self_target=self.self_target, dgd_erase=self.dgd_erase, initial_state=state,
            output_final_state=return_state, cu_seqlens=cu_seqlens,
            checkpoint_every=self.checkpoint_every)
        y = y.reshape(u.shape)
        if self.norm is not None and self.residual:
            y = y + (u - x.reshape(u.shape))  # the skip carries u, not norm(u)
        return (y, final) if return_state else y

    # -------------------------------------------------------------- from a dense MLP

    @torch.no_grad()
    def load_mlp_(self, linear_in: nn.Linear, linear_out: nn.Linear, strict: bool = True
                  ) -> "CMSLevel":
        """Set the initial memory weights from a dense MLP `d_model -> hidden_size -> d_model`,
        `linear_out(σ(linear_in(u)))` (the paper's level stacking: a pre-trained MLP block
        becomes the slow initial state of a level).

        Mapping: split the input/output features into the H head slices of D and the hidden
        units into H consecutive slices of F = hidden_size / H; head h takes the diagonal
        blocks `w_in[h] = W_in[h·F:(h+1)·F, h·D:(h+1)·D]` and
        `w_out[h] = W_out[h·D:(h+1)·D, h·F:(h+1)·F]`. With num_heads=1 that is the whole MLP,
        and the level with η = 0 (eta_max=0, no retention, norm=None) computes exactly
        `[u +] linear_out(σ(linear_in(u)))`. With H > 1 the level is exact only for an MLP that
        is block-diagonal in that layout; `strict=True` raises if an off-diagonal block is
        nonzero, `strict=False` drops those blocks. The memory has no biases: `strict=True`
        raises on a nonzero bias, `strict=False` drops it. σ must be the level's activation
        (exact-erf GELU for "gelu"; a tanh-approximate GELU MLP is only close).
        """
        where = f"{type(self).__name__}.load_mlp_"
        for lin, name in ((linear_in, "linear_in"), (linear_out, "linear_out")):
            if not isinstance(lin, nn.Linear):
                raise TypeError(f"{where}: {name} must be an nn.Linear, got "
                                f"{type(lin).__name__}")
        d, Fa = self.d_model, self.hidden_size
        if tuple(linear_in.weight.shape) != (Fa, d):
            raise ValueError(f"{where}: linear_in must map d_model={d} -> hidden_size={Fa} "
                             f"(weight [{Fa}, {d}]), got weight {list(linear_in.weight.shape)}")
        if tuple(linear_out.weight.shape) != (d, Fa):
            raise ValueError(f"{where}: linear_out must map hidden_size={Fa} -> d_model={d} "
                             f"(weight [{d}, {Fa}]), got weight "
                             f"{list(linear_out.weight.shape)}")
        H, D, Fh = self.num_heads, self.head_dim, Fa // self.num_heads
        w1 = linear_in.weight.detach().reshape(H, Fh, H, D)     # [H(hidden), F, H(in), D]
        w2 = linear_out.weight.detach().reshape(H, D, H, Fh)    # [H(out), D, H(hidden), F]
        eye = torch.arange(H, device=w1.device)
        if strict:
            for lin, name in ((linear_in, "linear_in"), (linear_out, "linear_out")):
                if lin.bias is not None and bool(lin.bias.detach().ne(0).any()):
                    raise ValueError(f"{where}: {name} has a nonzero bias, which the memory "
                                     f"MLP cannot represent (pass strict=False to drop it)")
            if H > 1:
                off = torch.ones(H, H, dtype=torch.bool, device=w1.device)
                off[eye, eye] = False
                if bool(w1.permute(0, 2, 1, 3)[off].ne(0).any()) or \
                        bool(w2.permute(0, 2, 1, 3)[off].ne(0).any()):
                    raise ValueError(
                        f"{where}: with num_heads={H} each head holds only the diagonal block "
                        f"of the MLP, but its weights have nonzero off-diagonal blocks; use "
                        f"num_heads=1 for an exact copy (or strict=False to drop them)")
        self.w_in.copy_(w1[eye, :, eye])    # [H, F, D]
        self.w_out.copy_(w2[eye, :, eye])   # [H, D, F]
        return self

    @classmethod
    def from_mlp(cls, linear_in: nn.Linear, linear_out: nn.Linear, chunk_size: int,
                 num_heads: int = 1, *, strict: bool = True, **kwargs) -> "CMSLevel":
        """A level whose initial memory weights are the MLP `linear_out(σ(linear_in(u)))`
        (see `load_mlp_` for the mapping); d_model, hidden_size, device and dtype come from
        the linears, the other arguments are `CMSLevel`'s. The projections start fresh."""
        if not isinstance(linear_in, nn.Linear):
            raise TypeError(f"{cls.__name__}.from_mlp: linear_in must be an nn.Linear, got "
                            f"{type(linear_in).__name__}")
        w = linear_in.weight
        kwargs.setdefault("device", w.device)
        kwargs.setdefault("dtype", w.dtype)
        level = cls(linear_in.in_features, num_heads, chunk_size, linear_in.out_features,
                    **kwargs)
        return level.load_mlp_(linear_in, linear_out, strict=strict)


# ------------------------------------------------------------------ the chain


class CMS(nn.Module):
    """Continuum Memory System: `y = M^(L)(… M^(1)(u))`, one `CMSLevel` per entry of
    `chunk_sizes` (applied in that order, so list the fastest level first).

    Args:
        d_model, num_heads: as for `CMSLevel` (every level splits d_model the same way).
        chunk_sizes: one int >= 1 per level (a bare int means one level).
        hidden_size: total hidden width of every level, or one per level; default
            `hidden_mult * d_model`.
        eta_max, momentum: one value for every level or one per level; eta_max=None gives
            each level 1 / (C_ℓ·D).
        Other keyword arguments: as for `CMSLevel`, shared by every level.

    `forward(u [B, T, d_model], state=None, *, cu_seqlens=None, return_state=False)`
    -> y `[B, T, d_model]`, or (y, [MLPMemoryState per level]) with return_state. Pass that
    list back as `state` to continue the sequences (entries may be None: that level starts
    from its initial weights).
    """

    def __init__(self, d_model: int, num_heads: int,
                 chunk_sizes: Union[int, Sequence[int]] = (16, 64, 256),
                 hidden_size: Union[None, int, Sequence[Optional[int]]] = None, *,
                 hidden_mult: float = 4.0,
                 eta_max: Union[None, float, Sequence[Optional[float]]] = None,
                 momentum: Union[float, Sequence[float]] = 0.0, activation: str = "silu",
                 objective: str = "l2", self_target: bool = False, dgd_erase: bool = True,
                 retention: bool = False, residual: bool = True, key_norm: bool = True,
                 norm: Optional[str] = None, checkpoint_every: int = CHECKPOINT_EVERY,
                 device=None, dtype=None):
        super().__init__()
        where = type(self).__name__
        _heads(where, d_model, num_heads)
        cs = _chunk_sizes(where, chunk_sizes)
        n = len(cs)
        widths = _per_level(where, "hidden_size", hidden_size, n)
        etas = _per_level(where, "eta_max", eta_max, n)
        moms = _per_level(where, "momentum", momentum, n)
        self.d_model, self.num_heads, self.chunk_sizes = d_model, num_heads, cs
        self.levels = nn.ModuleList(
            CMSLevel(d_model, num_heads, c, widths[i], hidden_mult=hidden_mult,
                     eta_max=etas[i], momentum=moms[i], activation=activation,
                     objective=objective, self_target=self_target, dgd_erase=dgd_erase,
                     retention=retention, residual=residual, key_norm=key_norm, norm=norm,
                     checkpoint_every=checkpoint_every, device=device, dtype=dtype)
            for i, c in enumerate(cs))

    def __len__(self) -> int:
        return len(self.levels)

    def extra_repr(self) -> str:
        return f"chunk_sizes={self.chunk_sizes}"

    def forward(self, u: Tensor, state: Optional[Sequence[Optional[MLPMemoryState]]] = None,
                *, cu_seqlens: Optional[Tensor] = None, return_state: bool = False
                ) -> Union[Tensor, Tuple[Tensor, State]]:
        where = type(self).__name__
        _check_u(where, u, self.d_model)
        if state is None:
            state = [None] * len(self.levels)
        elif not isinstance(state, (list, tuple)) or len(state) != len(self.levels):
            raise ValueError(f"{where}: state must be a list with one MLPMemoryState (or None) "
                             f"per level ({len(self.levels)}), got "
                             f"{len(state) if isinstance(state, (list, tuple)) else state!r}")
        finals: State = []
        y = u
        for level, s in zip(self.levels, state):
            if return_state:
                y, f = level(y, s, cu_seqlens=cu_seqlens, return_state=True)
                finals.append(f)
            else:
                y = level(y, s, cu_seqlens=cu_seqlens)
        return (y, finals) if return_state else y

    @classmethod
    def from_mlp(cls, mlps: Sequence[Any], chunk_sizes: Union[int, Sequence[int]],
                 num_heads: int = 1, *, strict: bool = True, **kwargs) -> "CMS":
        """A CMS whose level ℓ starts from the dense MLP `mlps[ℓ] = (linear_in, linear_out)`
        (the paper's level stacking, e.g. the MLP blocks of a pre-trained Transformer, slowest
        knowledge first or in whatever order you list them); a single `(linear_in,
        linear_out)` pair means one level. An entry None leaves that level freshly
        initialized (then pass hidden_size for it if it is not hidden_mult·d_model). Mapping
        and exactness: `CMSLevel.load_mlp_`. Other arguments: as for `CMS`."""
        where = f"{cls.__name__}.from_mlp"
        if isinstance(mlps, (list, tuple)) and len(mlps) == 2 and \
                all(isinstance(m, nn.Linear) for m in mlps):
            mlps = [tuple(mlps)]
        if not isinstance(mlps, (list, tuple)) or len(mlps) == 0:
            raise ValueError(f"{where}: mlps must be a non-empty list of (linear_in, "
                             f"linear_out) pairs, one per level")
        cs = _chunk_sizes(where, chunk_sizes)
        if len(cs) != len(mlps):
            raise ValueError(f"{where}: {len(mlps)} MLPs for {len(cs)} chunk sizes (give one "
                             f"(linear_in, linear_out) pair or None per level)")
        pairs = []
        for i, m in enumerate(mlps):
            if m is not None and (not isinstance(m, (list, tuple)) or len(m) != 2
                                  or not all(isinstance(t, nn.Linear) for t in m)):
                raise ValueError(f"{where}: mlps[{i}] must be a (linear_in, linear_out) pair "
                                 f"of nn.Linear or None")
            pairs.append(m)
        first = next((p for p in pairs if p is not None), None)
        if first is None:
            raise ValueError(f"{where}: every entry of mlps is None")
        w = first[0].weight
        kwargs.setdefault("device", w.device)
        kwargs.setdefault("dtype", w.dtype)
        if "hidden_size" not in kwargs:
            kwargs["hidden_size"] = [None if p is None else p[0].out_features for p in pairs]
        cms = cls(first[0].in_features, num_heads, cs, **kwargs)
        for level, p in zip(cms.levels, pairs):
            if p is not None:
                level.load_mlp_(p[0], p[1], strict=strict)
        return cms
