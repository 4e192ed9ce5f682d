"""Self-modifying memories (DESIGN §3.3) in Hope's setting — four residual SiLU MLP memories
M_k, M_v, M_η, M_α per sequence and head, momentum 0.9, dgd_erase, retention near 1, initial
weights [4, H, F, D] shared by the batch — nlcore.ops.self_modifying_scan against

    reference           nlcore.reference.self_modifying_scan, eager: a Python loop over chunks
                        (`scan_rows`), float32 compute (float64 for float64 inputs), backward
                        by autograd; the reference every row is compared with
    reference_compiled  `chunk_step` below (the reference's chunk body: the four reads, `derive`,
                        the self-targets, the inner gradients, the update) under torch.compile,
                        called from a Python loop over chunks (`compiled_scan`; compiling the
                        whole loop would unroll it, T/C steps). GEMM operands in the sequence
                        dtype when that is bf16/fp16 (what autocast would do; states stay
                        float32, as in nlcore's precision contract), float32 otherwise; checked
                        against the reference by `self_check` before it is timed, and skipped
                        (with the reason) when that fails, when torch.compile cannot run, or
                        with --no-compile / --quick

On CUDA the references' fwdbwd rows are skipped where what autograd keeps for their backward
(`autograd_bytes`: every chunk's weights and every token's activations, four memories' worth)
would pass 85% of the card's memory: C = 16 at D = 128 on an H100 (~68 GiB of its 79 GiB).

Inputs: x unit-norm rows in the run's dtype; w_in ~ 0.3·N(0, 1) [4, H, F, D], w_out ~
N(0, 1/F) [4, H, D, F], w_eta, w_alpha ~ 0.6·N(0, 1) [H, D] (w·r of a first read r, |r| ≈ 1.6,
is then about N(0, 1)), b_eta = 0 and b_alpha = 4 [H] (g ≈ logsigmoid(4) ≈ −0.02 per token),
all float32; eta_max = ETA_MAX · min(1, 128/F) (0.05 at F = 128, 0.025 at F = 256: the learning
rate shrinks with F so that the in-context descent stays stable: the reference's outputs stay
finite on every problem below, and at twice eta_max, but not at 3× at F = 128, nor with
b_alpha = 6). In this setting the memories forget their initial weights within a few hundred
tokens and approach the identity over T = 4096 (their norms fall to ~1e-15 of the start at
C = 16), and the backward of a T = 4096, C = 16 problem holds ~1% subnormal floats (counted at
D = 64): no matter on a GPU, slow on the CPU (--full); the CPU problems have none. fwd times
the forward under no_grad (k, v, eta, g; no final state); fwdbwd the forward and the
gradients of x, w_in, w_out, w_eta and w_alpha from random dk, dv, deta, dg (the rows'
rel_err then covers all five).

Problems [B, T, H, D, F, C] (`--shapes` takes BxTxHxDxFxC, e.g. 1x512x4x64x128x16; memory_mlp
reads the same syntax): on CUDA the issue's grid, B·T = 32k tokens (B = 8, T = 4096), H = 16,
D ∈ {64, 128}, F = 2D, C ∈ {16, 64}, the problems of the target (D = 128) first; on the CPU
two small ones (the CUDA grid with --full); --quick a tiny one with a partial last chunk.
Problems are outermost (all modes of one problem before the next), so a --max-seconds limit
cuts the least important ones.

FLOPs, per head and chunk of C tokens (a partial chunk counts pro rata), GEMMs only, for each
of the four memories (as in bench_memory_mlp.py):
    read      X W_inᵀ, H_x W_outᵀ                    2 · 2·C·D·F
    target    V W_inᵀ, H_v W_outᵀ   (self-target)    2 · 2·C·D·F
    keys      K W_inᵀ, H W_outᵀ                      2 · 2·C·D·F
    inner     (ηE) W_out, Q1ᵀ K, (ηE)ᵀ H             3 · 2·C·D·F
  = 18·C·D·F per memory, 72·C·D·F forward. Not counted: the activations, the DGD erase term,
  deriving k, v, eta, g from the reads (a norm and two dot products, ≈ 6·D per token) and the
  once-per-chunk state updates (≈ 4 · 12·F·D elementwise; they matter only at small C).
  fwdbwd counts 4× the forward: the forward, its recomputation in the backward (a kernel keeps
  at most chunk-start states, not activations), and the backward GEMMs (two per forward GEMM,
  all of whose operands need gradients). The CPU op's state-only replays of its checkpoint
  segments are not counted; the eager and compiled references, which keep every activation,
  do 3× the forward.
Bytes, the fewest: per token and head x read, k and v written (D each, the run's dtype), eta
and g written (float32); the four memories' w_in and w_out read once (float32, 8·H·F·D), w_eta
and w_alpha (2·H·D floats) and b_eta, b_alpha (2·H). fwdbwd adds dk, dv, x read and dx written
(4·D), deta and dg read (2 floats), w_in and w_out read and their gradients written (16·H·F·D
floats), w_eta and w_alpha read and their gradients written (4·H·D floats), the biases read
(2·H). The chunk-to-chunk state (4 · 4·F·D floats per sequence and head) is taken to stay on
chip: a kernel that streams it through memory instead moves 128·F·D bytes more per chunk for
72·C·D·F FLOPs (0.56·C FLOP/byte), which leaves it bandwidth-bound at every C of the grid on
an H100/H200.

Run through bench/run.py, or alone: python bench/bench_self_modifying.py --quick
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

NAME = "self_modifying"
REF = "reference"
COMPILED = "reference_compiled"
N_MEM = 4                       # M_k, M_v, M_η, M_α
N_GRAD = 5                      # x, w_in, w_out, w_eta, w_alpha take gradients; the biases not
# Hope's setting, for every impl
MOMENTUM = 0.9
FLAGS = dict(momentum=MOMENTUM, activation="silu", dgd_erase=True)
GATE_DTYPE = torch.float32      # eta's and g's dtype (the op's outputs; x, k, v the run's)
WEIGHT_DTYPE = torch.float32    # the initial weights' and the gates' read-outs
ETA_MAX = 0.05                  # at F ≤ 128; scaled by 128/F above
W_IN_SCALE = 0.3
W_GATE_SCALE = 0.6              # w_eta, w_alpha ~ 0.6·N(0, 1)
B_ETA = 0.0
B_ALPHA = 4.0                   # g = logsigmoid(w_αᵀr + 4) ≈ −0.018 per token
SELF_CHECK_TOL = 1e-4           # float32 vs the float64 reference (DESIGN §2)
# autograd keeps every chunk's weights and activations for the references' backward:
# leave a problem out where that estimate exceeds this share of the card's memory
REF_MEMORY_SHARE = 0.85

# [B, T, H, D, F, C]
_TOKENS = 32768
_T_CUDA = 4096
CUDA_SHAPES: Tuple[Tuple[int, ...], ...] = tuple(
    (_TOKENS // _T_CUDA, _T_CUDA, 16, d, 2 * d, c) for d in (128, 64) for c in (16, 64)
)
CPU_SHAPES: Tuple[Tuple[int, ...], ...] = ((1, 512, 4, 64, 128, 16), (1, 512, 4, 64, 128, 64))
QUICK_SHAPES: Tuple[Tuple[int, ...], ...] = ((2, 72, 2, 16, 32, 16),)
SELF_CHECK_SHAPE: Tuple[int, ...] = QUICK_SHAPES[0]  # so the quick run reuses its graph


# ---------------------------------------------------------------- problems


def eta_max_for(Fh: int) -> float:
    """The largest learning rate at hidden width F (module docstring)."""
    return ETA_MAX * min(1.0, 128 / Fh)


def flops(shape: Sequence[int], mode: str = "fwd") -> float:
    """FLOPs of one [B, T, H, D, F, C] problem (module docstring): 4 memories × 18·D·F per
    token and head forward, 4× that forward+backward."""
    B, T, H, D, Fh, _ = shape
    fwd = N_MEM * 18.0 * B * T * H * D * Fh
    return fwd * (4 if mode == "fwdbwd" else 1)


def nbytes(shape: Sequence[int], dtype: torch.dtype, mode: str) -> float:
    """The fewest bytes moved (module docstring)."""
    B, T, H, D, Fh, _ = shape
    item = torch.empty((), dtype=dtype).element_size()
    gate = torch.empty((), dtype=GATE_DTYPE).element_size()
    w = torch.empty((), dtype=WEIGHT_DTYPE).element_size()
    tokens = B * T * H
    weights = 2 * N_MEM * H * Fh * D + 2 * H * D + 2 * H
    fwd = tokens * (3 * D * item + 2 * gate) + weights * w
    if mode != "fwdbwd":
        return float(fwd)
    back = 4 * N_MEM * H * Fh * D + 4 * H * D + 2 * H
    return float(fwd + tokens * (4 * D * item + 2 * gate) + back * w)


def autograd_bytes(shape: Sequence[int]) -> float:
    """About what autograd keeps for the references' backward, in float32: per chunk the four
    memories' two weights (8·F·D per sequence and head), per token and head ≈ 56 F-sized and
    32 D-sized activations (four memories' worth; both fitted to the saved tensors of the
    eager reference, counted with saved_tensors_hooks on small problems, to within 3%). Only
    to leave out problems that cannot fit (C = 16 at D = 128 on an H100: ~68 GiB)."""
    B, T, H, D, Fh, C = shape
    return 4.0 * (B * H * math.ceil(T / C) * 2 * N_MEM * Fh * D
                  + B * T * H * (56 * Fh + 32 * D))


def _normalize_shape(shape: Sequence[int]) -> Optional[Tuple[int, ...]]:
    shape = tuple(int(s) for s in shape)
    return shape if len(shape) == 6 and all(s >= 1 for s in shape) else None


def shapes_for(cfg: Config) -> Tuple[Tuple[int, ...], ...]:
    if cfg.shapes:
        fit = [_normalize_shape(s) for s in cfg.shapes]
        for s, f in zip(cfg.shapes, fit):
            if f is None:  # another op's shape (--shapes applies to every op of the run)
                print(f"bench {NAME}: ignoring shape {'x'.join(map(str, s))} "
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
                weight_dtype: torch.dtype = WEIGHT_DTYPE):
    """(x, w_in, w_out, w_eta, w_alpha, b_eta, b_alpha) of one problem (module docstring)."""
    B, T, H, D, Fh, _ = shape

    def randn(*size):
        return torch.randn(size, device=device, generator=gen, dtype=torch.float32)

    x = F.normalize(randn(B, T, H, D), dim=-1).to(dtype)
    w_in = (W_IN_SCALE * randn(N_MEM, H, Fh, D)).to(weight_dtype)
    w_out = (randn(N_MEM, H, D, Fh) * Fh ** -0.5).to(weight_dtype)
    w_eta = (W_GATE_SCALE * randn(H, D)).to(weight_dtype)
    w_alpha = (W_GATE_SCALE * randn(H, D)).to(weight_dtype)
    b_eta = torch.full((H,), B_ETA, device=device, dtype=weight_dtype)
    b_alpha = torch.full((H,), B_ALPHA, device=device, dtype=weight_dtype)
    return x, w_in, w_out, w_eta, w_alpha, b_eta, b_alpha


def draw_output_grads(shape: Sequence[int], dtype: torch.dtype, device, gen: torch.Generator,
                      gate_dtype: torch.dtype = GATE_DTYPE):
    """Random (dk, dv, deta, dg): N(0, 1), dk and dv in the run's dtype."""
    B, T, H, D, _, _ = shape

    def randn(*size):
        return torch.randn(size, device=device, generator=gen, dtype=torch.float32)

    return (randn(B, T, H, D).to(dtype), randn(B, T, H, D).to(dtype),
            randn(B, T, H).to(gate_dtype), randn(B, T, H).to(gate_dtype))


# ---------------------------------------------------------------- the compiled-step baseline


def chunk_step(w1, w2, p1, p2, X, w_eta, w_alpha, b_eta, b_alpha, eta_max: float,
               momentum: float, mm_dtype: Optional[torch.dtype] = None):
    """One complete chunk of the reference's `scan_rows` in Hope's setting (SiLU, residual,
    objective "l2", self-targets, dgd_erase) as a pure function of the chunk-start state and
    the chunk's tokens, so that torch.compile sees one small graph.

    w1 `[B, 4, H, F, D]`, w2 `[B, 4, H, D, F]` (memories k, v, eta, alpha), p1, p2 (momentum
    buffers) alike; X `[B, H, C, D]`; w_eta, w_alpha `[H, D]`; b_eta, b_alpha `[H]`; all in
    the work dtype. mm_dtype rounds every GEMM's operands to that dtype (None: the work dtype).
    Returns (k, v `[B, H, C, D]`, eta, g `[B, H, C]`, w1', w2', p1', p2'): the outputs read at
    the chunk-start weights and the state after the chunk's update.
    """
    from nlcore.reference.self_modifying import derive

    def mm(a, b):
        if mm_dtype is None:
            return a @ b
        return (a.to(mm_dtype) @ b.to(mm_dtype)).to(a.dtype)

    w1t, w2t = w1.transpose(-1, -2), w2.transpose(-1, -2)

    def memory(u):  # M(u) = u + W_out silu(W_in u), u `[B, 1, H, C, D]` for all four
        z = mm(u, w1t)
        return u + mm(z * torch.sigmoid(z), w2t)

    k, v, eta, g = derive(memory(X[:, None]), w_eta, w_alpha, b_eta, b_alpha, eta_max)
    target = memory(v[:, None])                     # each memory's own target M(v)
    K = k[:, None]
    Z = mm(K, w1t)
    s = torch.sigmoid(Z)
    Hk = Z * s
    slope = s * (1 + Z * (1 - s))
    e = eta[:, None, :, :, None]
    E_eta = e * (K + mm(Hk, w2t) - target)
    Q1 = slope * mm(E_eta, w2) + e * Z              # + the DGD erase (ηZ)ᵀK, through Q1
    G1 = mm(Q1.transpose(-1, -2), K)
    G2 = mm(E_eta.transpose(-1, -2), Hk)
    alpha = g.sum(-1).exp()[:, None, :, None, None]  # shared by the four memories
    p1 = momentum * p1 - G1
    p2 = momentum * p2 - G2
    return k, v, eta, g, alpha * w1 + p1, alpha * w2 + p2, p1, p2


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


def compiled_scan(x, w_in, w_out, w_eta, w_alpha, b_eta, b_alpha, chunk_size: int,
                  eta_max: float, momentum: float = MOMENTUM, compiled: bool = True):
    """self_modifying_scan's (k, v, eta, g) in Hope's setting by a Python loop over chunks of
    `chunk_step` (under torch.compile when `compiled`). x `[B, T, H, D]`, w_in `[4, H, F, D]`,
    w_out `[4, H, D, F]`, w_eta, w_alpha `[H, D]`, b_eta, b_alpha `[H]`. A trailing partial
    chunk runs the step eagerly (one odd shape would cost a compile); its update is never
    applied, and the outputs do not depend on it."""
    B, T, H, D = x.shape
    work = torch.float64 if torch.float64 in (x.dtype, w_in.dtype) else torch.float32
    mm_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else None
    X = x.to(work).transpose(1, 2).contiguous()     # [B, H, T, D]
    w1 = w_in.to(work).unsqueeze(0).expand(B, *w_in.shape[-4:]).contiguous()
    w2 = w_out.to(work).unsqueeze(0).expand(B, *w_out.shape[-4:]).contiguous()
    gates = [t.to(work) for t in (w_eta, w_alpha, b_eta, b_alpha)]
    # momentum buffers that require grad like the weights, so the first chunk and the rest
    # hit one compiled graph
    grad = torch.is_grad_enabled() and w1.requires_grad
    p1 = torch.zeros_like(w1).requires_grad_(grad)
    p2 = torch.zeros_like(w2).requires_grad_(grad)
    step = _compiled() if compiled else chunk_step
    outs = []
    for s in range(0, T, chunk_size):
        e = min(T, s + chunk_size)
        fn = step if e - s == chunk_size else chunk_step
        *seq, w1, w2, p1, p2 = fn(w1, w2, p1, p2, X[:, :, s:e], *gates, eta_max, momentum,
                                  mm_dtype)
        outs.append(seq)
    k, v, eta, g = (torch.cat(t, 2).transpose(1, 2) for t in zip(*outs))
    return k.to(x.dtype), v.to(x.dtype), eta, g


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


def _impls(cfg: Config, shape: Sequence[int], mode: str):
    """(name, forward fn (x, w_in, w_out, w_eta, w_alpha, b_eta, b_alpha) -> (k, v, eta, g),
    skip reason), the reference first so the others are compared with its output."""
    from nlcore.ops import self_modifying_scan
    from nlcore.reference import self_modifying_scan as reference
    C = shape[5]
    eta_max = eta_max_for(shape[4])

    def ref(x, w_in, w_out, w_eta, w_alpha, b_eta, b_alpha):
        return reference(x, w_in, w_out, w_eta, w_alpha, C, eta_max=eta_max, b_eta=b_eta,
                         b_alpha=b_alpha, **FLAGS)[:4]

    def ours(x, w_in, w_out, w_eta, w_alpha, b_eta, b_alpha):
        return self_modifying_scan(x, w_in, w_out, w_eta, w_alpha, C, eta_max=eta_max,
                                   b_eta=b_eta, b_alpha=b_alpha, **FLAGS)[:4]

    def comp(x, w_in, w_out, w_eta, w_alpha, b_eta, b_alpha):
        return compiled_scan(x, w_in, w_out, w_eta, w_alpha, b_eta, b_alpha, C, eta_max)

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
    return [(REF, ref, too_big), ("nlcore", ours, None), (COMPILED, comp, comp_skip)]


def _sets_maker(cfg: Config, shape: Tuple[int, ...], dtype: torch.dtype, mode: str):
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
                leaves = tuple(t.requires_grad_(i < N_GRAD) for i, t in enumerate(ins))
                sets.append(leaves + draw_output_grads(shape, dtype, dev, gen))
        return sets
    return make


def _timed(fwd: Callable, mode: str) -> Callable:
    if mode == "fwd":
        def run(*ins):
            with torch.no_grad():
                return fwd(*ins)
        return run

    def run_fb(*ins_douts):
        ins, douts = ins_douts[:-4], ins_douts[-4:]
        return torch.autograd.grad(fwd(*ins), ins[:N_GRAD], douts)
    return run_fb


def tasks(cfg: Config) -> List[Task]:
    out: List[Task] = []
    for shape in shapes_for(cfg):
        for mode in cfg.modes:
            for dtype in dtypes_for(cfg):
                make = _sets_maker(cfg, shape, dtype, mode)
                params = {"chunk": shape[5], **FLAGS, "eta_max": eta_max_for(shape[4]),
                          "b_eta": B_ETA, "b_alpha": B_ALPHA, "w_shared": True,
                          "gate_dtype": str(GATE_DTYPE).replace("torch.", "")}
                for name, fwd, skip in _impls(cfg, shape, mode):
                    out.append(Task(op=NAME, impl=name, mode=mode, shape=shape, dtype=dtype,
                                    fn=_timed(fwd, mode), make_sets=make,
                                    flops=flops(shape, mode), nbytes=nbytes(shape, dtype, mode),
                                    ref_impl=REF, params=params, skip=skip))
    return out


def self_check(seed: int = 0, compiled: bool = True, shape: Sequence[int] = SELF_CHECK_SHAPE,
               dtype: torch.dtype = torch.float32, device="cpu") -> float:
    """compiled_scan in `dtype` on `device` (eager with compiled=False) against the float64
    reference on the CPU, k, v, eta, g and the gradients of x, w_in, w_out, w_eta and w_alpha
    from random output gradients, on a problem whose last chunk is partial; returns the
    largest of their relative errors."""
    from nlcore.reference import self_modifying_scan as reference
    gen = torch.Generator().manual_seed(seed)
    ins64 = draw_inputs(shape, torch.float64, "cpu", gen, torch.float64)
    for t in ins64[:N_GRAD]:
        t.requires_grad_(True)
    douts = draw_output_grads(shape, torch.float64, "cpu", gen, torch.float64)
    eta_max = eta_max_for(shape[4])
    out = reference(*ins64[:5], shape[5], eta_max=eta_max, b_eta=ins64[5], b_alpha=ins64[6],
                    **FLAGS)[:4]
    want = [t.detach() for t in out] + list(torch.autograd.grad(out, ins64[:N_GRAD], douts))
    ins = [t.detach().to(device, dtype).requires_grad_(i < N_GRAD) for i, t in enumerate(ins64)]
    out = compiled_scan(*ins, shape[5], eta_max, compiled=compiled)
    douts = [d.to(device, dtype) for d in douts]
    got = [t.detach() for t in out] + list(torch.autograd.grad(out, ins[:N_GRAD], douts))
    return max(((a.cpu().double() - b).norm() / b.norm()).item() for a, b in zip(got, want))


if __name__ == "__main__":
    from bench.run import main
    sys.exit(main(["--ops", NAME] + sys.argv[1:]))
