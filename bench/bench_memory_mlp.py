"""MLP memory scan (DESIGN §3.2) in Hope's setting — objective "l2", self_target, dgd_erase,
momentum 0.9, SiLU, residual, weights [H, F, D] shared by the batch — nlcore.ops.memory_mlp_scan
against

    reference           nlcore.reference.memory_mlp_scan, eager: a Python loop over chunks
                        (`scan_rows`), float32 compute (float64 for float64 inputs), backward
                        by autograd; the reference every row is compared with
    nlcore[persistent]  (CUDA, experimental: left out with --no-experimental) the op with
                        kernel="persistent" — DESIGN §7 step two, one launch per forward with a
                        thread-block cluster per sequence and head keeping the weights on chip
                        (the backward stays step one). Skipped, with the reason, where the op
                        would fall back to step one (`memory_mlp_scan_path`), so the row never
                        times step one under this name
    reference_compiled  `chunk_step` below under torch.compile, called from a Python loop over
                        chunks (`compiled_scan`; compiling the whole loop would unroll it, T/C
                        steps). GEMM operands in the sequence dtype when that is bf16/fp16
                        (what autocast would do; states stay float32, as in nlcore's precision
                        contract), float32 otherwise; checked against the reference by
                        `self_check` before it is timed, and skipped (with the reason) when that
                        fails, when torch.compile cannot run, or with --no-compile / --quick

On CUDA the references' fwdbwd rows are skipped where what autograd keeps for their backward
(`autograd_bytes`: every chunk's weights and every token's activations) would pass 85% of the
card's memory: C = 1 on the grid except the smallest problems (~275 GiB at H = 16, D = 128).

Inputs: x, k, v unit-norm rows in the run's dtype; eta = ETA_MAX · min(1, 128/F) ·
sigmoid(N(0, 1)) and g = logsigmoid(N(0, 1) + 6) in float32 (the learning rate shrinks with F
so that the in-context descent stays stable at every size); w_in ~ 0.3·N(0, 1) [H, F, D],
w_out ~ N(0, 1/F) [H, D, F] in float32. fwd times the forward under no_grad (y only, no final
state); fwdbwd the forward and the gradients of x, k, v, eta, g, w_in and w_out from a random
dy (the rows' rel_err then covers all seven).

Problems [B, T, H, D, F, C] (`--shapes` takes BxTxHxDxFxC, e.g. 1x1024x4x64x256x16): on CUDA the
issue's grid, B·T = 32k tokens (B = 8, T = 4096), H ∈ {8, 16}, D ∈ {64, 128}, F = 4D,
C ∈ {16, 64, 256, 1}, the problems of the targets (H = 16, D = 128) first; on the CPU three
small ones (the CUDA grid with --full); --quick a tiny one with a partial last chunk. Problems
are outermost (all modes of one problem before the next), so a --max-seconds limit cuts the
least important ones.

FLOPs, per head and chunk of C tokens (a partial chunk counts pro rata), GEMMs only:
    read      X W_inᵀ, H_x W_outᵀ                    2 · 2·C·D·F
    target    V W_inᵀ, H_v W_outᵀ   (self_target)    2 · 2·C·D·F
    keys      K W_inᵀ, H W_outᵀ                      2 · 2·C·D·F
    inner     (ηE) W_out, Q1ᵀ K, (ηE)ᵀ H             3 · 2·C·D·F
  = 18·C·D·F forward. Not counted: the activations, the DGD erase term (elementwise, given Z),
  and the once-per-chunk state update (≈ 12·F·D elementwise; it matters only at small C).
  fwdbwd counts 4× the forward: the forward, its recomputation in the backward (a kernel keeps
  at most chunk-start states, not activations), and the backward GEMMs (two per forward GEMM,
  all of whose operands need gradients). The CPU op's state-only replays of its checkpoint
  segments (≈ 14·C·D·F each) are not counted; the eager and compiled references, which keep
  every activation, do 3× the forward.
Bytes, the fewest: per token and head x, k, v read and y written (D each, the run's dtype),
eta and g read (float32); w_in and w_out read once (float32, 2·H·F·D). fwdbwd adds dy, x, k, v
read and dx, dk, dv written (7·D), eta and g read and their gradients written (4 floats), and
the weights read and their gradients written (4·H·F·D floats). The chunk-to-chunk state (4·F·D
floats per sequence and head) is taken to stay on chip: a kernel that streams it through
memory instead moves 32·F·D bytes more per chunk for 18·C·D·F FLOPs (0.56·C FLOP/byte), which
leaves it bandwidth-bound at every C of the grid on an H100/H200.

Run through bench/run.py, or alone: python bench/bench_memory_mlp.py --quick
"""
from __future__ import annotations

import math
import sys
import zlib
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import Config, Task, rotation_count  # noqa: E402

NAME = "memory_mlp"
REF = "reference"
COMPILED = "reference_compiled"
# Hope's setting, for every impl
MOMENTUM = 0.9
FLAGS = dict(momentum=MOMENTUM, activation="silu", residual=True, objective="l2",
             self_target=True, dgd_erase=True)
GATE_DTYPE = torch.float32      # eta's and g's dtype (x, k, v take the run's dtype)
WEIGHT_DTYPE = torch.float32    # the initial weights'
ETA_MAX = 0.1
W_IN_SCALE = 0.3
G_SHIFT = 6.0                   # g = logsigmoid(N(0, 1) + 6) ≈ −0.0025 per token
SELF_CHECK_TOL = 1e-4           # float32 vs the float64 reference (DESIGN §2)
# autograd keeps every chunk's weights and activations for the references' backward:
# leave a problem out where that estimate exceeds this share of the card's memory
REF_MEMORY_SHARE = 0.85

# [B, T, H, D, F, C]
_TOKENS = 32768
_T_CUDA = 4096
CUDA_SHAPES: Tuple[Tuple[int, ...], ...] = tuple(
    (_TOKENS // _T_CUDA, _T_CUDA, h, d, 4 * d, c)
    for d, h in ((128, 16), (128, 8), (64, 16), (64, 8)) for c in (16, 64, 256, 1)
)
CPU_SHAPES: Tuple[Tuple[int, ...], ...] = (
    (1, 1024, 4, 64, 256, 16), (1, 1024, 4, 64, 256, 64), (1, 512, 4, 64, 256, 1),
)
QUICK_SHAPES: Tuple[Tuple[int, ...], ...] = ((2, 72, 2, 16, 64, 16),)
SELF_CHECK_SHAPE: Tuple[int, ...] = QUICK_SHAPES[0]  # so the quick run reuses its graph


# ---------------------------------------------------------------- problems


def flops(shape: Sequence[int], mode: str = "fwd") -> float:
    """FLOPs of one [B, T, H, D, F, C] problem (module docstring): 18·D·F per token and head
    forward, 4× that forward+backward."""
    B, T, H, D, Fh, _ = shape
    fwd = 18.0 * B * T * H * D * Fh
    return fwd * (4 if mode == "fwdbwd" else 1)


def nbytes(shape: Sequence[int], dtype: torch.dtype, mode: str) -> float:
    """The fewest bytes moved (module docstring)."""
    B, T, H, D, Fh, _ = shape
    item = torch.empty((), dtype=dtype).element_size()
    gate = torch.empty((), dtype=GATE_DTYPE).element_size()
    w = torch.empty((), dtype=WEIGHT_DTYPE).element_size()
    tokens = B * T * H
    fwd = tokens * (4 * D * item + 2 * gate) + 2 * H * Fh * D * w
    if mode != "fwdbwd":
        return float(fwd)
    return float(fwd + tokens * (7 * D * item + 4 * gate) + 4 * H * Fh * D * w)


def autograd_bytes(shape: Sequence[int]) -> float:
    """About what autograd keeps for the references' backward, in float32: per chunk the two
    weights (2·F·D per sequence and head), per token and head ≈ 16 F-sized and 12 D-sized
    activations. Only to leave out problems that cannot fit (C = 1 on the GPU grid)."""
    B, T, H, D, Fh, C = shape
    return 4.0 * (B * H * math.ceil(T / C) * 2 * Fh * D + B * T * H * (16 * Fh + 12 * D))


def _normalize_shape(shape: Sequence[int]) -> Optional[Tuple[int, ...]]:
    shape = tuple(int(s) for s in shape)
    return shape if len(shape) == 6 and all(s >= 1 for s in shape) else None


def shapes_for(cfg: Config) -> Tuple[Tuple[int, ...], ...]:
    if cfg.shapes:
        fit = [_normalize_shape(s) for s in cfg.shapes]
        for s, f in zip(cfg.shapes, fit):
            if f is None:  # another op's shape (--shapes applies to every op of the run)
                print(f"bench memory_mlp: ignoring shape {'x'.join(map(str, s))} "
                      f"(want BxTxHxDxFxC)", file=sys.stderr)
        return tuple(f for f in fit if f is not None)
    if cfg.quick:
        return QUICK_SHAPES
    return CUDA_SHAPES if (cfg.is_cuda or cfg.full) else CPU_SHAPES


def dtypes_for(cfg: Config) -> Tuple[torch.dtype, ...]:
    """bf16 on CUDA unless dtypes were asked for (run.py's default is float32 alone)."""
    if cfg.is_cuda and not cfg.dtypes_explicit:
        return (torch.bfloat16,)
    return tuple(cfg.dtypes)


def draw_inputs(shape: Sequence[int], dtype: torch.dtype, device, gen: torch.Generator,
                gate_dtype: torch.dtype = GATE_DTYPE, weight_dtype: torch.dtype = WEIGHT_DTYPE):
    """(x, k, v, eta, g, w_in, w_out) of one problem (module docstring)."""
    B, T, H, D, Fh, _ = shape

    def randn(*size):
        return torch.randn(size, device=device, generator=gen, dtype=torch.float32)

    x, k, v = (F.normalize(randn(B, T, H, D), dim=-1).to(dtype) for _ in range(3))
    eta = (ETA_MAX * min(1.0, 128 / Fh) * torch.sigmoid(randn(B, T, H))).to(gate_dtype)
    g = F.logsigmoid(randn(B, T, H) + G_SHIFT).to(gate_dtype)
    w_in = (W_IN_SCALE * randn(H, Fh, D)).to(weight_dtype)
    w_out = (randn(H, D, Fh) * Fh ** -0.5).to(weight_dtype)
    return x, k, v, eta, g, w_in, w_out


# ---------------------------------------------------------------- the compiled-step baseline


def chunk_step(w1, w2, p1, p2, X, K, V, eta, g, momentum: float,
               mm_dtype: Optional[torch.dtype] = None):
    """One complete chunk of the reference's `scan_rows` in Hope's setting (objective "l2",
    self_target, dgd_erase, SiLU, residual) as a pure function of the chunk-start state and
    the chunk's tokens, so that torch.compile sees one small graph.

    w1 `[B, H, F, D]`, w2 `[B, H, D, F]`, p1, p2 (momentum buffers) alike; X, K, V
    `[B, H, C, D]`, eta, g `[B, H, C]`, all in the work dtype. mm_dtype rounds every GEMM's
    operands to that dtype (None: the work dtype). Returns (Y `[B, H, C, D]`, w1', w2', p1',
    p2'): the reads at the anchor and the state after the chunk's update.
    """
    def mm(a, b):
        if mm_dtype is None:
            return a @ b
        return (a.to(mm_dtype) @ b.to(mm_dtype)).to(a.dtype)

    w1t, w2t = w1.transpose(-1, -2), w2.transpose(-1, -2)

    def memory(u):  # M(u) = u + W_out silu(W_in u)
        z = mm(u, w1t)
        return u + mm(z * torch.sigmoid(z), w2t)

    Y = memory(X)
    target = memory(V)
    Z = mm(K, w1t)
    s = torch.sigmoid(Z)
    Hk = Z * s
    slope = s * (1 + Z * (1 - s))
    e = eta.unsqueeze(-1)
    E_eta = e * (K + mm(Hk, w2t) - target)
    Q1 = slope * mm(E_eta, w2) + e * Z              # + the DGD erase (ηZ)ᵀK, through Q1
    G1 = mm(Q1.transpose(-1, -2), K)
    G2 = mm(E_eta.transpose(-1, -2), Hk)
    alpha = g.sum(-1).exp()[..., None, None]
    p1 = momentum * p1 - G1
    p2 = momentum * p2 - G2
    return Y, alpha * w1 + p1, alpha * w2 + p2, p1, p2


_compiled_step: Optional[Callable] = None


def _compiled() -> Callable:
    global _compiled_step
    if _compiled_step is None:
        import torch._dynamo
        dyn = torch._dynamo.config
        # one graph per problem (and grad mode): lift the limits so none falls back to eager
        for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                     "accumulated_recompile_limit"):
            if hasattr(dyn, knob):
                setattr(dyn, knob, max(getattr(dyn, knob), 256))
        _compiled_step = torch.compile(chunk_step, dynamic=False)
    return _compiled_step


def compiled_scan(x, k, v, eta, g, w_in, w_out, chunk_size: int, momentum: float = MOMENTUM,
                  compiled: bool = True) -> torch.Tensor:
    """memory_mlp_scan's y in Hope's setting by a Python loop over chunks of `chunk_step`
    (under torch.compile when `compiled`). x, k, v `[B, T, H, D]`, eta, g `[B, T, H]`, w_in
    `[H, F, D]`, w_out `[H, D, F]`. A trailing partial chunk runs the step eagerly (one odd
    shape would cost a compile); its update is never applied, and y does not depend on it."""
    B, T, H, D = x.shape
    work = torch.float64 if torch.float64 in (x.dtype, w_in.dtype) else torch.float32
    mm_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else None

    def heads(t):  # [B, T, H(, D)] -> [B, H, T(, D)], contiguous, in the work dtype
        return t.to(work).transpose(1, 2).contiguous()

    X, Kh, Vh, E, Gh = (heads(t) for t in (x, k, v, eta, g))
    w1 = w_in.to(work).expand(B, *w_in.shape[-3:]).contiguous()
    w2 = w_out.to(work).expand(B, *w_out.shape[-3:]).contiguous()
    # momentum buffers that require grad like the weights, so the first chunk and the rest
    # hit one compiled graph
    grad = torch.is_grad_enabled() and w1.requires_grad
    p1 = torch.zeros_like(w1).requires_grad_(grad)
    p2 = torch.zeros_like(w2).requires_grad_(grad)
    step = _compiled() if compiled else chunk_step
    ys = []
    for s in range(0, T, chunk_size):
        e = min(T, s + chunk_size)
        fn = step if e - s == chunk_size else chunk_step
        y, w1, w2, p1, p2 = fn(w1, w2, p1, p2, X[:, :, s:e], Kh[:, :, s:e], Vh[:, :, s:e],
                               E[:, :, s:e], Gh[:, :, s:e], momentum, mm_dtype)
        ys.append(y)
    return torch.cat(ys, 2).transpose(1, 2).to(x.dtype)


_self_check_verdict: dict = {}   # device -> skip reason (None: passed)


def _compiled_skip(device: torch.device) -> Optional[str]:
    """Run self_check once per process and device; a failure turns the reference_compiled rows
    into skipped rows that say so (a wrong baseline must not be timed as if it were right)."""
    key = str(device)
    if key not in _self_check_verdict:
        try:
            err = self_check(device=device)
            why = (None if err <= SELF_CHECK_TOL else
                   f"self-check failed: rel err {err:.1e} vs the float64 reference")
        except Exception as exc:  # no compiler, an inductor failure, ...
            why = f"self-check raised {type(exc).__name__}: {str(exc).strip()[:80]}"
        _self_check_verdict[key] = why
    return _self_check_verdict[key]


# ---------------------------------------------------------------- implementations


def persistent_path(cfg: Config, shape: Sequence[int], dtype: torch.dtype):
    """The path kernel="persistent" takes for a problem (a `ScanPath`), asked with a one-token
    stand-in of its inputs (the choice depends on D, F, the dtype, N·H and the device, not T);
    None where the op has no path query."""
    try:
        from nlcore.ops.memory_mlp import memory_mlp_scan_path
    except ImportError:
        return None
    B, _, H, D, Fh, C = shape
    x = torch.zeros(B, 1, H, D, device=cfg.device, dtype=dtype)
    eta = torch.zeros(B, 1, H, device=cfg.device, dtype=GATE_DTYPE)
    w_in = torch.zeros(H, Fh, D, device=cfg.device, dtype=WEIGHT_DTYPE)
    w_out = torch.zeros(H, D, Fh, device=cfg.device, dtype=WEIGHT_DTYPE)
    return memory_mlp_scan_path(x, x, x, eta, w_in, w_out, C, g=eta, **FLAGS,
                                kernel="persistent")


def _impls(cfg: Config, shape: Sequence[int], mode: str, dtype: torch.dtype = torch.float32):
    """(name, forward fn (x, k, v, eta, g, w_in, w_out) -> y, experimental, skip reason), the
    reference first so the others are compared with its output."""
    from nlcore.ops import memory_mlp_scan
    from nlcore.reference import memory_mlp_scan as reference
    C = shape[5]

    def ref(x, k, v, eta, g, w_in, w_out):
        return reference(x, k, v, eta, w_in, w_out, C, g=g, **FLAGS)[0]

    def ours(x, k, v, eta, g, w_in, w_out):
        return memory_mlp_scan(x, k, v, eta, w_in, w_out, C, g=g, **FLAGS)[0]

    def comp(x, k, v, eta, g, w_in, w_out):
        return compiled_scan(x, k, v, eta, g, w_in, w_out, C)

    def persistent(x, k, v, eta, g, w_in, w_out):
        return memory_mlp_scan(x, k, v, eta, w_in, w_out, C, g=g, **FLAGS,
                               kernel="persistent")[0]

    too_big = None
    if cfg.is_cuda and mode == "fwdbwd":
        need = autograd_bytes(shape)
        have = torch.cuda.get_device_properties(cfg.device).total_memory
        if need > REF_MEMORY_SHARE * have:
            too_big = (f"autograd would keep ~{need / 2**30:.0f} GiB (estimate), more than "
                       f"{REF_MEMORY_SHARE:.0%} of the card's {have / 2**30:.0f} GiB")
    if not cfg.compile:
        comp_skip = "torch.compile off (--no-compile, or --quick without --compile)"
    else:
        comp_skip = too_big or _compiled_skip(cfg.device)
    out = [(REF, ref, False, too_big), ("nlcore", ours, False, None),
           (COMPILED, comp, False, comp_skip)]
    if cfg.is_cuda and cfg.experimental:
        try:
            path = persistent_path(cfg, shape, dtype)
            why = (None if path is not None and path.kernel == "persistent" else
                   "no path query" if path is None else
                   f"falls back to step one: {path.reason}")
        except Exception as exc:
            why = f"path query raised {type(exc).__name__}: {str(exc).strip()[:80]}"
        out.append(("nlcore[persistent]", persistent, True, why))
    return out


def _sets_maker(cfg: Config, shape: Tuple[int, ...], dtype: torch.dtype, mode: str):
    B, T, H, D, _, _ = shape
    set_bytes = int(nbytes(shape, dtype, "fwd"))
    seed = cfg.seed + zlib.crc32(f"{NAME}/{mode}/{shape}/{dtype}".encode())

    def make() -> List[tuple]:
        dev = cfg.device
        gen = torch.Generator(device=dev).manual_seed(seed)
        sets = []
        for _ in range(rotation_count(cfg, set_bytes)):
            ins = draw_inputs(shape, dtype, dev, gen)
            if mode == "fwd":
                sets.append(ins)
            else:
                dy = torch.randn(B, T, H, D, device=dev, generator=gen).to(dtype)
                sets.append(tuple(t.requires_grad_(True) for t in ins) + (dy,))
        return sets
    return make


def _timed(fwd: Callable, mode: str) -> Callable:
    if mode == "fwd":
        def run(*ins):
            with torch.no_grad():
                return fwd(*ins)
        return run

    def run_fb(*ins_dy):
        *ins, dy = ins_dy
        return torch.autograd.grad(fwd(*ins), ins, dy)
    return run_fb


def tasks(cfg: Config) -> List[Task]:
    out: List[Task] = []
    for shape in shapes_for(cfg):
        for mode in cfg.modes:
            for dtype in dtypes_for(cfg):
                make = _sets_maker(cfg, shape, dtype, mode)
                params = {"chunk": shape[5], **FLAGS, "w_shared": True,
                          "gate_dtype": str(GATE_DTYPE).replace("torch.", "")}
                for name, fwd, experimental, skip in _impls(cfg, shape, mode, dtype):
                    out.append(Task(op=NAME, impl=name, mode=mode, shape=shape, dtype=dtype,
                                    fn=_timed(fwd, mode), make_sets=make,
                                    flops=flops(shape, mode), nbytes=nbytes(shape, dtype, mode),
                                    ref_impl=REF, params=params, experimental=experimental,
                                    skip=skip))
    return out


def self_check(seed: int = 0, compiled: bool = True, shape: Sequence[int] = SELF_CHECK_SHAPE,
               dtype: torch.dtype = torch.float32, device="cpu") -> float:
    """compiled_scan in `dtype` on `device` (eager with compiled=False) against the float64
    reference on the CPU, y and the gradients of x, k, v, eta, g, w_in and w_out from a random
    dy, on a problem whose last chunk is partial; returns the largest of their relative
    errors."""
    from nlcore.reference import memory_mlp_scan as reference
    gen = torch.Generator().manual_seed(seed)
    ins64 = [t.requires_grad_(True) for t in
             draw_inputs(shape, torch.float64, "cpu", gen, torch.float64, torch.float64)]
    dy = torch.randn(ins64[0].shape, generator=gen, dtype=torch.float64)
    y_ref = reference(*ins64[:3], ins64[3], ins64[5], ins64[6], shape[5], g=ins64[4],
                      **FLAGS)[0]
    want = [y_ref.detach()] + list(torch.autograd.grad(y_ref, ins64, dy))
    ins = [t.detach().to(device, dtype).requires_grad_(True) for t in ins64]
    y = compiled_scan(*ins, shape[5], compiled=compiled)
    got = [y.detach()] + list(torch.autograd.grad(y, ins, dy.to(device, dtype)))
    return max(((a.cpu().double() - b).norm() / b.norm()).item() for a, b in zip(got, want))


if __name__ == "__main__":
    from bench.run import main
    sys.exit(main(["--ops", NAME] + sys.argv[1:]))
