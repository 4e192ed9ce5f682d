"""DGD linear memory (DESIGN §3.1), benchmarked as fla's gated delta rule (erase = exp(g)·beta,
read after the write): nlcore.ops.gated_delta_rule against

    torch_chunk      nlcore.reference.dgd_naive_chunk: our strongest plain-PyTorch chunked
                     form (a Python loop over chunks, one batched triangular solve per chunk);
                     the reference every row is compared with
    fla_naive_style  `fla_naive_chunk` below: a pure-PyTorch chunked gated delta rule built
                     the way fla's `naive_chunk_gated_delta_rule` is (the UT transform by a
                     Python loop of forward substitution over the chunk rows, then a Python
                     loop over chunks) — the baseline the issue's CPU target names
    token_loop       nlcore.reference.dgd, one token at a time (~0.15 ms/token on a CPU): only
                     where T ≤ 4096 and B·H ≤ 16 (the CPU problems and --quick)
    fla              fla.ops.gated_delta_rule.chunk_gated_delta_rule (CUDA, when `import fla`
                     works; otherwise a skipped row that says why)
    torch_compile    torch_chunk with its chunk body under torch.compile (`_chunk_step`;
                     compiling the whole function would unroll the chunk loop), when
                     compiling is on

Inputs: q ~ N(0, 1), k unit-norm rows, v ~ N(0, 1) in the run's dtype; beta = sigmoid(N(0, 1))
in the run's dtype; g = logsigmoid(N(0, 1) + 3) in float32 (as fla's GatedDeltaNet layer makes
it). fwd times the forward under no_grad; fwdbwd the forward and the gradients of q, k, v, g
and beta from a random dO (the rows' rel_err then covers all five gradients).

Problems [B, T, H, K, V] (`--shapes` takes BxTxHxKxV, or BxTxHxD for K = V = D): on CUDA the
issue's grid, B·T = 32k tokens, T ∈ {2k, 8k, 32k}, H ∈ {4, 16, 32}, K = V ∈ {64, 128}; on the
CPU the issue's target problem (1, 4096, 4, 64, 64) and a smaller one (the CUDA grid with
--full); --quick a tiny one.

FLOPs, per head and chunk of C = 64 tokens (a partial chunk counts pro rata):
    2·C²·K (K Kᵀ) + C²·(K + V) (the triangular solves for W and U)
    + 4 · 2·C·K·V (K S₀, W S₀, Kᵀ W for the state update, Q S₀)
    + 2·C²·K (Q Kᵀ) + 2·C²·V (P W)
forward+backward counts three times the forward.
Bytes, the fewest: per token and head, q and k (K each), v and o (V each), g (float32) and beta
once; forward+backward twice that (inputs and dO read, o and the five gradients written).

Run through bench/run.py, or alone: python bench/bench_dgd.py --quick
"""
from __future__ import annotations

import sys
import zlib
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import Config, Task, rotation_count  # noqa: E402

NAME = "dgd"
REF = "torch_chunk"
CHUNK = 64
GATE_DTYPE = torch.float32          # g's dtype (beta takes the run's dtype)
TOKEN_LOOP_MAX_T = 4096             # the token loop costs ~0.15 ms/token on a CPU
TOKEN_LOOP_MAX_BH = 16

# [B, T, H, K, V]
CUDA_SHAPES: Tuple[Tuple[int, ...], ...] = tuple(
    (32768 // t, t, h, d, d) for t in (2048, 8192, 32768) for h in (4, 16, 32) for d in (64, 128)
)
CPU_SHAPES: Tuple[Tuple[int, ...], ...] = ((1, 4096, 4, 64, 64), (1, 1024, 4, 64, 64))
QUICK_SHAPES: Tuple[Tuple[int, ...], ...] = ((1, 256, 2, 32, 32),)


# ---------------------------------------------------------------- fla-style chunked baseline


def fla_naive_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                    beta: torch.Tensor, scale: Optional[float] = None,
                    initial_state: Optional[torch.Tensor] = None, chunk_size: int = CHUNK
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gated delta rule, S_t = exp(g_t) S_{t-1} + beta_t k_t (v_t − exp(g_t) S_{t-1}ᵀ k_t)ᵀ,
    o_t = scale · S_tᵀ q_t, in plain PyTorch, structured like fla's naive chunk reference.

    q, k `[B, T, H, K]`, v `[B, T, H, V]`, g, beta `[B, T, H]`, initial_state `[B, H, K, V]`.
    Pads T to a multiple of the chunk (zero keys, values, gates: padding leaves the state
    alone), then for all chunks at once, with G the in-chunk cumulative sum of g:
        A = strict_lower(diag(beta) K Kᵀ ⊙ exp(G_i − G_j))
        T = (I + A)⁻¹  by forward substitution, one Python step per chunk row
        U = T diag(beta) V,   Wd = T diag(beta · exp(G)) K
    and a Python loop over chunks carries the state:
        V' = U − Wd S,   O = diag(exp(G)) Q S + (Q Kᵀ ⊙ exp(G_i − G_j), lower incl.) V'
        S ← exp(G_C) S + (diag(exp(G_C − G)) K)ᵀ V'
    Computes in float32 (float64 for float64 inputs); returns (o in v's dtype, final state).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    scale = K ** -0.5 if scale is None else scale
    work = torch.promote_types(q.dtype, torch.float32)
    dev = q.device

    def heads_first(x):  # [B, T, H, ...] -> [B, H, T, ...] in the work dtype
        return x.transpose(1, 2).to(work)

    qh, kh, vh, gh, bh = (heads_first(x) for x in (q, k, v, g, beta))
    pad = (-T) % C
    if pad:
        qh, kh, vh = (F.pad(x, (0, 0, 0, pad)) for x in (qh, kh, vh))
        gh, bh = F.pad(gh, (0, pad)), F.pad(bh, (0, pad))
    n = (T + pad) // C

    def chunked(x):  # [B, H, n·C, D] -> [B, H, n, C, D]
        return x.reshape(B, H, n, C, x.shape[-1])

    qc = chunked(qh * scale)
    kc = chunked(kh)
    kb = chunked(kh * bh[..., None])
    vb = chunked(vh * bh[..., None])
    G = gh.reshape(B, H, n, C).cumsum(-1)                     # [B, H, n, C]
    on_or_below = torch.ones(C, C, dtype=torch.bool, device=dev).tril()
    # exp(G_i − G_j) for j ≤ i, 0 above the diagonal (exponentiate causal differences only)
    decay = (G[..., :, None] - G[..., None, :]).masked_fill(~on_or_below, float("-inf")).exp()

    # the UT transform: T = (I + A)⁻¹ with A strictly lower. Row i of N = T − I satisfies
    # N[i, :i] = −A[i, :i] − Σ_{j<i} A[i, j] N[j, :i]; start from N = −A and fill row by row.
    strictly_below = torch.ones(C, C, dtype=torch.bool, device=dev).tril(-1)
    N = -(kb @ kc.transpose(-1, -2) * decay).masked_fill(~strictly_below, 0.0)
    for i in range(1, C):
        row = N[..., i, :i].clone()
        N[..., i, :i] = row + (row[..., :, None] * N[..., :i, :i].clone()).sum(-2)
    Tm = N + torch.eye(C, dtype=work, device=dev)
    U = Tm @ vb                                               # [B, H, n, C, V]
    Wd = Tm @ (kb * G.exp()[..., None])                       # [B, H, n, C, K]

    S = (torch.zeros(B, H, K, V, dtype=work, device=dev) if initial_state is None
         else initial_state.to(work))
    outs = []
    for c in range(n):
        Qi, Ki, Gi = qc[:, :, c], kc[:, :, c], G[:, :, c]
        Vn = U[:, :, c] - Wd[:, :, c] @ S
        P = Qi @ Ki.transpose(-1, -2) * decay[:, :, c]
        outs.append((Qi * Gi.exp()[..., None]) @ S + P @ Vn)
        last = Gi[..., -1:]
        S = S * last.exp()[..., None] + (Ki * (last - Gi).exp()[..., None]).transpose(-1, -2) @ Vn
    o = torch.stack(outs, 2).reshape(B, H, n * C, V)[:, :, :T]
    return o.transpose(1, 2).to(v.dtype), S


# ---------------------------------------------------------------- problems


def flops(shape: Sequence[int], chunk: int = CHUNK) -> float:
    """Forward FLOPs of one [B, T, H, K, V] problem (module docstring)."""
    B, T, H, K, V = shape
    C = chunk
    per_chunk = (2 * C * C * K + C * C * (K + V) + 4 * 2 * C * K * V
                 + 2 * C * C * K + 2 * C * C * V)
    return float(B * H * (T / C) * per_chunk)


def nbytes(shape: Sequence[int], dtype: torch.dtype, mode: str) -> float:
    """The fewest bytes moved (module docstring)."""
    B, T, H, K, V = shape
    item = torch.empty((), dtype=dtype).element_size()
    gate = torch.empty((), dtype=GATE_DTYPE).element_size()
    once = B * T * H * ((2 * K + 2 * V + 1) * item + gate)
    return float(once * (2 if mode == "fwdbwd" else 1))


def _normalize_shape(shape: Sequence[int]) -> Optional[Tuple[int, ...]]:
    shape = tuple(int(s) for s in shape)
    if len(shape) == 4:  # BxTxHxD: K = V = D
        return shape + (shape[-1],)
    return shape if len(shape) == 5 else None


def shapes_for(cfg: Config) -> Tuple[Tuple[int, ...], ...]:
    if cfg.shapes:
        fit = [_normalize_shape(s) for s in cfg.shapes]
        for s, f in zip(cfg.shapes, fit):
            if f is None:  # another op's shape (--shapes applies to every op of the run)
                print(f"bench dgd: ignoring shape {'x'.join(map(str, s))} "
                      f"(want BxTxHxKxV or BxTxHxD)", file=sys.stderr)
        return tuple(f for f in fit if f is not None)
    if cfg.quick:
        return QUICK_SHAPES
    return CUDA_SHAPES if (cfg.is_cuda or cfg.full) else CPU_SHAPES


def dtypes_for(cfg: Config) -> Tuple[torch.dtype, ...]:
    """bf16 on CUDA unless dtypes were asked for (run.py's default is float32 alone)."""
    if cfg.is_cuda and not cfg.dtypes_explicit:
        return (torch.bfloat16,)
    return tuple(cfg.dtypes)


_self_check_err: Optional[float] = None


def _fla_style_skip() -> Optional[str]:
    """Run self_check once per process; a failure turns the fla_naive_style rows into
    skipped rows that say so (a wrong baseline must not be timed as if it were right)."""
    global _self_check_err
    if _self_check_err is None:
        try:
            _self_check_err = self_check()
        except Exception as exc:
            return f"self-check raised {type(exc).__name__}: {str(exc)[:80]}"
    if not _self_check_err <= 1e-10:
        return f"self-check failed: rel err {_self_check_err:.1e} vs the token loop"
    return None


# ---------------------------------------------------------------- implementations


def _chunk_step(S, Q, Kc, Vc, be, a, gg, scale: float):
    """One chunk of nlcore.reference.dgd_naive_chunk (read="after"), restated as a function of
    the incoming state so that torch.compile sees one small graph: compiling the whole
    reference unrolls its Python loop over chunks (about a minute of CPU compile time per 16
    chunks, hours for T = 32k), so `torch_compile` compiles this step and loops over chunks
    in Python. Returns (o of the chunk, the outgoing state)."""
    C = Q.shape[-2]
    Gc = gg.cumsum(-1)
    Gp = Gc - gg
    strict = torch.ones(C, C, dtype=torch.bool, device=Q.device).tril(-1)
    incl = torch.ones(C, C, dtype=torch.bool, device=Q.device).tril()
    gamma = (Gp[..., :, None] - Gc[..., None, :]).masked_fill(~strict, float("-inf")).exp()
    L = a[..., :, None] * gamma * (Kc @ Kc.mT)
    eye = torch.eye(C, dtype=Q.dtype, device=Q.device)
    U = be[..., None] * Vc - (a * Gp.exp())[..., None] * (Kc @ S)
    W = torch.linalg.solve_triangular(eye + L, U, upper=False, unitriangular=True)
    M = (Gc[..., :, None] - Gc[..., None, :]).masked_fill(~incl, float("-inf")).exp()
    o = scale * (Gc.exp()[..., None] * (Q @ S) + (M * (Q @ Kc.mT)) @ W)
    d = (Gc[..., -1:] - Gc).exp()
    S = Gc[..., -1, None, None].exp() * S + Kc.mT @ (d[..., None] * W)
    return o, S


_compiled_step: Optional[Callable] = None


def torch_chunk_compiled(q, k, v, g, beta, chunk_size: int = CHUNK) -> torch.Tensor:
    """torch_chunk (gated delta rule) with its chunk body under torch.compile."""
    global _compiled_step
    if _compiled_step is None:
        from torch import _dynamo
        dyn = _dynamo.config
        for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                     "accumulated_recompile_limit"):
            if hasattr(dyn, knob):
                setattr(dyn, knob, max(getattr(dyn, knob), 256))
        _compiled_step = torch.compile(_chunk_step, dynamic=False)
    B, T, H, K = q.shape
    V = v.shape[-1]
    work = torch.promote_types(q.dtype, torch.float32)
    qh, kh, vh = (x.to(work).transpose(1, 2) for x in (q, k, v))
    gh, bh = g.to(work).transpose(1, 2), beta.to(work).transpose(1, 2)
    ah = gh.exp() * bh
    S = torch.zeros(B, H, K, V, dtype=work, device=q.device)
    outs = []
    for c0 in range(0, T, chunk_size):
        c1 = min(T, c0 + chunk_size)
        o, S = _compiled_step(S, qh[:, :, c0:c1], kh[:, :, c0:c1], vh[:, :, c0:c1],
                              bh[:, :, c0:c1], ah[:, :, c0:c1], gh[:, :, c0:c1], K ** -0.5)
        outs.append(o)
    return torch.cat(outs, 2).transpose(1, 2).to(v.dtype)


def _fla_op() -> Tuple[Optional[Callable], Optional[str]]:
    try:
        import fla  # noqa: F401
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        return chunk_gated_delta_rule, None
    except Exception as exc:
        return None, f"fla not importable ({type(exc).__name__}: {str(exc)[:80]})"


def _impls(cfg: Config, shape: Sequence[int]):
    """(name, forward fn (q, k, v, g, beta) -> o, experimental, skip reason), the reference
    first so the others are compared with its output."""
    from nlcore.ops import gated_delta_rule
    from nlcore.reference import dgd as token_loop
    from nlcore.reference import dgd_naive_chunk

    def ref(q, k, v, g, beta):
        return dgd_naive_chunk(q, k, v, beta, g=g, erase=g.exp() * beta, chunk_size=CHUNK)[0]

    def ours(q, k, v, g, beta):
        return gated_delta_rule(q, k, v, g, beta)[0]

    def fla_style(q, k, v, g, beta):
        return fla_naive_chunk(q, k, v, g, beta)[0]

    def loop(q, k, v, g, beta):
        return token_loop(q, k, v, beta, g=g, erase=g.exp() * beta)[0]

    out = [(REF, ref, False, None), ("nlcore", ours, False, None),
           ("fla_naive_style", fla_style, False, _fla_style_skip())]
    B, T, H = shape[:3]
    if T <= TOKEN_LOOP_MAX_T and B * H <= TOKEN_LOOP_MAX_BH:  # the CPU target, --quick
        out.append(("token_loop", loop, False, None))
    op, why = _fla_op() if cfg.is_cuda else (None, "fla's Triton kernels need CUDA")
    if op is not None:
        def peer(q, k, v, g, beta):
            return op(q, k, v, g, beta)[0]
        out.append(("fla", peer, False, None))
    else:
        out.append(("fla", ref, False, why))
    if cfg.compile:
        out.append(("torch_compile", torch_chunk_compiled, False, None))
    return out


def _sets_maker(cfg: Config, shape: Tuple[int, ...], dtype: torch.dtype, mode: str):
    B, T, H, K, V = shape
    set_bytes = int(nbytes(shape, dtype, mode))
    seed = cfg.seed + zlib.crc32(f"{NAME}/{mode}/{shape}/{dtype}".encode())

    def make() -> List[tuple]:
        dev = cfg.device
        gen = torch.Generator(device=dev).manual_seed(seed)

        def randn(*size, dt=dtype):
            return torch.randn(size, device=dev, generator=gen).to(dt)

        sets = []
        for _ in range(rotation_count(cfg, set_bytes)):
            q = randn(B, T, H, K)
            k = F.normalize(torch.randn(B, T, H, K, device=dev, generator=gen), dim=-1).to(dtype)
            v = randn(B, T, H, V)
            g = F.logsigmoid(torch.randn(B, T, H, device=dev, generator=gen) + 3.0).to(GATE_DTYPE)
            beta = torch.sigmoid(torch.randn(B, T, H, device=dev, generator=gen)).to(dtype)
            if mode == "fwd":
                sets.append((q, k, v, g, beta))
            else:
                ins = tuple(x.requires_grad_(True) for x in (q, k, v, g, beta))
                sets.append(ins + (randn(B, T, H, V),))
        return sets
    return make


def _timed(fwd: Callable, mode: str) -> Callable:
    if mode == "fwd":
        def run(q, k, v, g, beta):
            with torch.no_grad():
                return fwd(q, k, v, g, beta)
        return run

    def run_fb(q, k, v, g, beta, dO):
        return torch.autograd.grad(fwd(q, k, v, g, beta), (q, k, v, g, beta), dO)
    return run_fb


def tasks(cfg: Config) -> List[Task]:
    out: List[Task] = []
    for mode in cfg.modes:
        for dtype in dtypes_for(cfg):
            for shape in shapes_for(cfg):
                make = _sets_maker(cfg, shape, dtype, mode)
                f = flops(shape) * (3 if mode == "fwdbwd" else 1)
                params = {"chunk": CHUNK, "erase": "exp(g)*beta", "read": "after",
                          "g_dtype": str(GATE_DTYPE).replace("torch.", "")}
                for name, fwd, experimental, skip in _impls(cfg, shape):
                    out.append(Task(op=NAME, impl=name, mode=mode, shape=shape, dtype=dtype,
                                    fn=_timed(fwd, mode), make_sets=make, flops=f,
                                    nbytes=nbytes(shape, dtype, mode), ref_impl=REF,
                                    params=params, experimental=experimental, skip=skip))
    return out


def self_check(dtype: torch.dtype = torch.float64, seed: int = 0) -> float:
    """fla_naive_chunk against the token-by-token truth (nlcore.reference.dgd with
    erase = exp(g)·beta) on a small problem whose T is not a multiple of the chunk, with an
    initial state; returns the larger relative error of o and the final state."""
    from nlcore.reference import dgd
    gen = torch.Generator().manual_seed(seed)
    B, T, H, K, V = 2, 150, 3, 16, 24
    q = torch.randn(B, T, H, K, generator=gen, dtype=dtype)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen, dtype=dtype), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen, dtype=dtype)
    g = F.logsigmoid(torch.randn(B, T, H, generator=gen, dtype=dtype) + 2.0)
    beta = torch.sigmoid(torch.randn(B, T, H, generator=gen, dtype=dtype))
    h0 = torch.randn(B, H, K, V, generator=gen, dtype=dtype)
    o, s = fla_naive_chunk(q, k, v, g, beta, initial_state=h0)
    o_ref, s_ref = dgd(q, k, v, beta, g=g, erase=g.exp() * beta, initial_state=h0,
                       output_final_state=True)
    return max(((o - o_ref).norm() / o_ref.norm()).item(),
               ((s - s_ref).norm() / s_ref.norm()).item())


if __name__ == "__main__":
    from bench.run import main
    sys.exit(main(["--ops", NAME] + sys.argv[1:]))
