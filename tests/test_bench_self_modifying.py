"""bench/bench_self_modifying.py: the quick run yields rows for nlcore and every reference, its
compiled-step baseline computes the reference's scan (checked against the float64 reference),
and a baseline that fails that check is skipped, not timed."""
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if not (ROOT / "bench" / "bench_self_modifying.py").is_file():
    pytest.skip("needs a source checkout (bench/)", allow_module_level=True)
sys.path.insert(0, str(ROOT))

from bench import bench_self_modifying as bench  # noqa: E402
from bench.common import Config  # noqa: E402
from bench.run import _shape, main, run_benchmarks  # noqa: E402
from nlcore.reference import self_modifying_scan as reference  # noqa: E402

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
    rows = [r for r in record["rows"] if r["op"] == "self_modifying" and r["mode"] == mode]
    by_impl = {r["impl"]: r for r in rows}
    for impl in impls:
        r = by_impl.get(impl)
        assert r is not None, f"no {impl} row in {mode}"
        assert r["error"] is None, (impl, mode, r["error"])
        assert r["ms"] > 0 and r["flops"] > 0 and r["bytes"] > 0
        assert r["roofline_frac"] is not None and r["speedup_vs_ref"] is not None
        assert "peak_mb" in r  # None on the CPU
        # a wrong path would show here (fp32 vs the fp32 reference; fwd: k, v, eta, g;
        # fwdbwd: the gradients of x, w_in, w_out, w_eta, w_alpha)
        assert r["rel_err_vs_ref"] is not None and r["rel_err_vs_ref"] < 1e-4, (impl, mode)
        assert r["params"]["momentum"] == bench.MOMENTUM and r["params"]["dgd_erase"]
        assert r["params"]["b_alpha"] == bench.B_ALPHA
    return by_impl


def test_quick_run_rows(tmp_path):
    record = run_benchmarks(ops=["self_modifying"], quick=True, out=tmp_path,
                            print_table=False, progress=False, device="cpu",
                            modes=["fwd", "fwdbwd"])
    assert record["path"] and Path(record["path"]).is_file()
    for mode in ("fwd", "fwdbwd"):
        by_impl = _check_rows(record, mode, IMPLS[:2])
        # --quick leaves torch.compile out: the row is there, skipped, with the reason
        assert by_impl["reference_compiled"]["error"].startswith("skipped: torch.compile off")
    # the quick problem ends in a partial chunk
    (shape,) = {tuple(r["shape"]) for r in record["rows"]}
    assert shape[1] % shape[5] != 0


@pytest.mark.parametrize("outcome", ["inaccurate", "raises"])
def test_failed_self_check_skips_compiled_rows(monkeypatch, outcome):
    """A compiled baseline that disagrees with the reference, or cannot compile, gives skipped
    rows that say why (run once per device), and never a time."""
    calls = []

    def fake_check(device="cpu", **kw):
        calls.append(device)
        if outcome == "raises":
            raise RuntimeError("no C++ compiler\nmore")
        return 10 * bench.SELF_CHECK_TOL

    monkeypatch.setattr(bench, "self_check", fake_check)
    monkeypatch.setattr(bench, "_self_check_verdict", {})
    record = run_benchmarks(ops=["self_modifying"], quick=True, compile=True, out=None,
                            print_table=False, progress=False, device="cpu",
                            modes=["fwd", "fwdbwd"])
    assert len(calls) == 1
    want = ("skipped: self-check failed: rel err 1.0e-03" if outcome == "inaccurate" else
            "skipped: self-check raised RuntimeError: no C++ compiler")
    for mode in ("fwd", "fwdbwd"):
        by_impl = _check_rows(record, mode, IMPLS[:2])
        r = by_impl["reference_compiled"]
        assert r["ms"] is None and r["error"].startswith(want), r["error"]


def test_compiled_step_self_check_and_rows(tmp_path):
    why = _compile_unavailable()
    if why:
        pytest.skip(why)
    err = bench.self_check()
    assert err < bench.SELF_CHECK_TOL, err
    # the quick problem is the self-check's: the fwdbwd rows reuse its compiled graph
    record = run_benchmarks(ops=["self_modifying"], quick=True, compile=True, out=None,
                            print_table=False, progress=False, device="cpu",
                            modes=["fwd", "fwdbwd"])
    for mode in ("fwd", "fwdbwd"):
        _check_rows(record, mode, IMPLS)


@pytest.mark.parametrize("shape", [(2, 40, 2, 8, 16, 16), (1, 9, 2, 8, 16, 1),
                                   (2, 30, 1, 8, 12, 7)])
def test_chunk_step_loop_matches_reference(shape, seed):
    """The step function, eager, in float64: k, v, eta, g and all five gradients equal the
    reference's (T not a multiple of C, C = 1)."""
    assert bench.self_check(seed=seed, compiled=False, shape=shape,
                            dtype=torch.float64) < 1e-10


def test_self_check_has_teeth(seed):
    """On the self-check's problem the weights move materially, and detaching the
    self-generated targets, freezing the memories or leaving out the momentum moves the
    outputs or the gradients by far more than the self-check's tolerance."""
    shape = bench.SELF_CHECK_SHAPE
    gen = torch.Generator().manual_seed(seed)
    ins = bench.draw_inputs(shape, torch.float64, "cpu", gen, torch.float64)
    for t in ins[:bench.N_GRAD]:
        t.requires_grad_(True)
    douts = bench.draw_output_grads(shape, torch.float64, "cpu", gen, torch.float64)

    def run(**over):
        flags = {**bench.FLAGS, **over}
        *out, st = reference(*ins[:5], shape[5], eta_max=bench.eta_max_for(shape[4]),
                             b_eta=ins[5], b_alpha=ins[6], output_final_state=True, **flags)
        grads = torch.autograd.grad(out, ins[:bench.N_GRAD], douts)
        return [t.detach() for t in out] + list(grads), st

    full, st = run()
    moved = (st.w_in[:, 0] - ins[1]).norm() / ins[1].norm()
    assert moved.item() >= 0.1
    for over in ({"detach_target": True}, {"frozen": True}, {"momentum": 0.0}):
        other, _ = run(**over)
        diff = max(((a - b).norm() / b.norm()).item() for a, b in zip(other, full))
        assert diff > 100 * bench.SELF_CHECK_TOL, (over, diff)


def test_reference_skipped_where_autograd_would_not_fit(monkeypatch):
    """On CUDA the references' fwdbwd rows of the grid's largest problem are skipped on an
    H100 (79.2 GiB as torch reports it), not on an H200 (139.8 GiB); fwd and the other
    problems are run."""
    cfg = Config(device=torch.device("cuda"), compile=False)
    for gib, skipped in ((79.2, {bench.CUDA_SHAPES[0]}), (139.8, set())):
        props = SimpleNamespace(total_memory=int(gib * 2**30))
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a, **k: props)
        for shape in bench.CUDA_SHAPES:
            for mode in ("fwd", "fwdbwd"):
                impls = {n: skip for n, _, skip in bench._impls(cfg, shape, mode)}
                big = mode == "fwdbwd" and shape in skipped
                assert (impls["reference"] is not None) == big, (gib, shape, mode)
                assert impls["nlcore"] is None
                if big:
                    assert impls["reference"].startswith("autograd would keep")


def test_flops_bytes_and_shapes(capsys):
    B, T, H, D, F, C = shape = (1, 512, 4, 64, 128, 16)
    # 4 memories × 9 GEMMs of 2·C·D·F per chunk and head forward; 4× forward+backward
    assert bench.flops(shape) == (T // C) * B * H * 4 * 9 * 2 * C * D * F
    assert bench.flops(shape, "fwdbwd") == 4 * bench.flops(shape)
    weights = 8 * H * F * D + 2 * H * D + 2 * H
    fwd = B * T * H * (3 * D * 4 + 2 * 4) + weights * 4
    assert bench.nbytes(shape, torch.float32, "fwd") == fwd
    assert bench.nbytes(shape, torch.float32, "fwdbwd") == (
        fwd + B * T * H * (4 * D * 4 + 2 * 4) + (16 * H * F * D + 4 * H * D + 2 * H) * 4)
    assert bench.nbytes(shape, torch.bfloat16, "fwd") == fwd - B * T * H * 3 * D * 2
    # the GPU grid: B = 8, T = 4096, H = 16, F = 2D, the D and C, the target first
    assert all((b, t, h, f) == (8, 4096, 16, 2 * d) for b, t, h, d, f, c in bench.CUDA_SHAPES)
    assert {(d, c) for *_, d, f, c in bench.CUDA_SHAPES} == {
        (d, c) for d in (64, 128) for c in (16, 64)}
    assert bench.CUDA_SHAPES[0][3] == 128
    assert bench.eta_max_for(128) == bench.ETA_MAX == 2 * bench.eta_max_for(256)
    # --shapes BxTxHxDxFxC; other lengths (another op's) are left out with a message
    assert _shape("1x512x4x64x128x16") == (1, 512, 4, 64, 128, 16)
    with pytest.raises(Exception):
        _shape("1x512x0x64")
    with pytest.raises(Exception):
        _shape("1x512xfour")
    with pytest.raises(SystemExit, match="bad shape"):
        main(["--ops", "self_modifying", "--shapes", "1x512x-4x64x128x16", "--out", "-"])
    cfg = Config(device=torch.device("cpu"), shapes=((1, 64, 2, 16, 32, 16), (64, 64)))
    assert bench.shapes_for(cfg) == ((1, 64, 2, 16, 32, 16),)
    assert "ignoring shape 64x64" in capsys.readouterr().err
