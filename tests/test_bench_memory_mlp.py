"""bench/bench_memory_mlp.py: the quick run yields rows for nlcore and every reference, and its
compiled-step baseline computes the reference's scan (checked against the float64 reference)."""
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if not (ROOT / "bench" / "bench_memory_mlp.py").is_file():
    pytest.skip("needs a source checkout (bench/)", allow_module_level=True)
sys.path.insert(0, str(ROOT))

from bench import bench_memory_mlp as bench  # noqa: E402
from bench.run import _shape, run_benchmarks  # noqa: E402
from nlcore.reference import memory_mlp_scan as reference  # noqa: E402

IMPLS = ("reference", "nlcore", "reference_compiled")


def _compile_unavailable():
    """Why torch.compile cannot run here (None when it can): no dynamo on this Python, or no
    working inductor toolchain (a C++ compiler on the CPU)."""
    try:
        import torch._dynamo
        if not torch._dynamo.is_dynamo_supported():
            return "torch._dynamo is not supported on this Python"
        torch.compile(lambda t: t * 2 + 1)(torch.ones(4))
    except Exception as exc:
        return f"torch.compile failed: {type(exc).__name__}: {str(exc).strip()[:120]}"
    return None


def _check_rows(record, mode, impls):
    rows = [r for r in record["rows"] if r["op"] == "memory_mlp" and r["mode"] == mode]
    by_impl = {r["impl"]: r for r in rows}
    for impl in impls:
        r = by_impl.get(impl)
        assert r is not None, f"no {impl} row in {mode}"
        assert r["error"] is None, (impl, mode, r["error"])
        assert r["ms"] > 0 and r["flops"] > 0 and r["bytes"] > 0
        assert r["roofline_frac"] is not None and r["speedup_vs_ref"] is not None
        assert "peak_mb" in r  # None on the CPU
        # a wrong path would show here (fp32 vs the fp32 reference; fwdbwd: all 7 gradients)
        assert r["rel_err_vs_ref"] is not None and r["rel_err_vs_ref"] < 1e-4, (impl, mode)
        assert r["params"]["self_target"] and r["params"]["momentum"] == bench.MOMENTUM
    return by_impl


def test_quick_run_rows(tmp_path):
    record = run_benchmarks(ops=["memory_mlp"], quick=True, out=tmp_path, print_table=False,
                            progress=False, device="cpu", modes=["fwd", "fwdbwd"])
    assert record["path"] and Path(record["path"]).is_file()
    for mode in ("fwd", "fwdbwd"):
        by_impl = _check_rows(record, mode, IMPLS[:2])
        # --quick leaves torch.compile out: the row is there, skipped, with the reason
        assert by_impl["reference_compiled"]["error"].startswith("skipped: torch.compile off")


def test_compiled_step_self_check_and_rows(tmp_path):
    why = _compile_unavailable()
    if why:
        pytest.skip(why)
    err = bench.self_check()
    assert err < bench.SELF_CHECK_TOL, err
    # the quick problem is the self-check's: the fwdbwd rows reuse its compiled graph
    record = run_benchmarks(ops=["memory_mlp"], quick=True, compile=True, out=None,
                            print_table=False, progress=False, device="cpu",
                            modes=["fwd", "fwdbwd"])
    for mode in ("fwd", "fwdbwd"):
        _check_rows(record, mode, IMPLS)


@pytest.mark.parametrize("shape", [(2, 40, 2, 8, 32, 16), (1, 9, 2, 8, 32, 1),
                                   (2, 30, 1, 8, 24, 7)])
def test_chunk_step_loop_matches_reference(shape, seed):
    """The step function, eager, in float64: y and all seven gradients equal the reference's
    (T not a multiple of C, C = 1)."""
    assert bench.self_check(seed=seed, compiled=False, shape=shape,
                            dtype=torch.float64) < 1e-10


def test_self_check_has_teeth(seed):
    """On the self-check's problem the weights move materially, and leaving out the second-order
    terms (the inner gradient detached) or the momentum moves y or the gradients by far more
    than the self-check's tolerance."""
    shape = bench.SELF_CHECK_SHAPE
    gen = torch.Generator().manual_seed(seed)
    x, k, v, eta, g, w_in, w_out = (t.requires_grad_(True) for t in bench.draw_inputs(
        shape, torch.float64, "cpu", gen, torch.float64, torch.float64))
    ins = (x, k, v, eta, g, w_in, w_out)
    dy = torch.randn(x.shape, generator=gen, dtype=torch.float64)

    def run(**over):
        flags = {**bench.FLAGS, **over}
        y, st = reference(x, k, v, eta, w_in, w_out, shape[5], g=g, output_final_state=True,
                          **flags)
        # first_order: y no longer depends on k (it enters through G only)
        grads = torch.autograd.grad(y, ins, dy, retain_graph=True, allow_unused=True)
        return [y] + [torch.zeros_like(t) if d is None else d for d, t in zip(grads, ins)], st

    full, st = run()
    moved = (st.w_in[0] - w_in).norm() / w_in.norm()
    assert moved.item() >= 0.1
    for over in ({"first_order": True}, {"momentum": 0.0}):
        other, _ = run(**over)
        diff = max(((a - b).norm() / b.norm()).item() for a, b in zip(other, full))
        assert diff > 100 * bench.SELF_CHECK_TOL, (over, diff)


def test_flops_bytes_and_shapes():
    B, T, H, D, F, C = shape = (1, 1024, 4, 64, 256, 16)
    # 9 GEMMs of 2·C·D·F per chunk and head forward; 4× forward+backward
    assert bench.flops(shape) == (T // C) * B * H * 9 * 2 * C * D * F
    assert bench.flops(shape, "fwdbwd") == 4 * bench.flops(shape)
    fwd = B * T * H * (4 * D * 4 + 2 * 4) + 2 * H * F * D * 4
    assert bench.nbytes(shape, torch.float32, "fwd") == fwd
    assert bench.nbytes(shape, torch.float32, "fwdbwd") == (
        fwd + B * T * H * (7 * D * 4 + 4 * 4) + 4 * H * F * D * 4)
    # the GPU grid: B·T = 32k, F = 4D, the H, D and C
    assert all(b * t == 32768 and f == 4 * d for b, t, h, d, f, c in bench.CUDA_SHAPES)
    assert {(h, d, c) for _, _, h, d, _, c in bench.CUDA_SHAPES} == {
        (h, d, c) for h in (8, 16) for d in (64, 128) for c in (1, 16, 64, 256)}
    # --shapes BxTxHxDxFxC
    assert _shape("1x1024x4x64x256x16") == (1, 1024, 4, 64, 256, 16)
    with pytest.raises(Exception):
        _shape("1x1024x0x64")
