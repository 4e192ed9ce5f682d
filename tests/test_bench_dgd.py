"""bench/bench_dgd.py: the quick run yields rows for nlcore and every reference, and its
fla-style chunked baseline computes fla's gated delta rule (checked against the token loop)."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if not (ROOT / "bench" / "bench_dgd.py").is_file():
    pytest.skip("needs a source checkout (bench/)", allow_module_level=True)
sys.path.insert(0, str(ROOT))

from bench import bench_dgd  # noqa: E402
from bench.run import run_benchmarks  # noqa: E402
from nlcore.reference import dgd  # noqa: E402


def test_quick_run_rows(tmp_path):
    record = run_benchmarks(ops=["dgd"], quick=True, out=tmp_path, print_table=False,
                            progress=False, device="cpu", modes=["fwd", "fwdbwd"])
    assert record["path"] and Path(record["path"]).is_file()
    rows = [r for r in record["rows"] if r["op"] == "dgd"]
    for mode in ("fwd", "fwdbwd"):
        by_impl = {r["impl"]: r for r in rows if r["mode"] == mode}
        for impl in ("torch_chunk", "nlcore", "fla_naive_style", "token_loop"):
            r = by_impl.get(impl)
            assert r is not None, f"no {impl} row in {mode}"
            assert r["error"] is None, (impl, mode, r["error"])
            assert r["ms"] > 0 and r["flops"] > 0 and r["bytes"] > 0
            assert r["roofline_frac"] is not None and r["speedup_vs_ref"] is not None
            assert "peak_mb" in r  # None on the CPU
            # a wrong path would show here (fp32 vs the fp32 chunked reference)
            assert r["rel_err_vs_ref"] is not None and r["rel_err_vs_ref"] < 1e-4, (impl, mode)
        # fla is CUDA-only: on the CPU its row is there, skipped, with the reason
        assert by_impl["fla"]["error"].startswith("skipped:")


@pytest.mark.parametrize("T", [1, 63, 150])
def test_fla_naive_style_matches_token_loop(T, seed):
    gen = torch.Generator().manual_seed(seed)
    B, H, K, V = 2, 3, 16, 24
    dt = torch.float64
    q = torch.randn(B, T, H, K, generator=gen, dtype=dt)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen, dtype=dt), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen, dtype=dt)
    # strong enough decay and writes that the state moves materially over the sequence
    g = F.logsigmoid(torch.randn(B, T, H, generator=gen, dtype=dt) + 1.0)
    beta = torch.sigmoid(torch.randn(B, T, H, generator=gen, dtype=dt))
    h0 = torch.randn(B, H, K, V, generator=gen, dtype=dt)
    for init in (None, h0):
        o, s = bench_dgd.fla_naive_chunk(q, k, v, g, beta, initial_state=init)
        o_ref, s_ref = dgd(q, k, v, beta, g=g, erase=g.exp() * beta, initial_state=init,
                           output_final_state=True)
        assert o.dtype == dt and o.shape == o_ref.shape
        assert ((o - o_ref).norm() / o_ref.norm()).item() < 1e-10
        assert ((s - s_ref).norm() / s_ref.norm()).item() < 1e-10
    # teeth: the plain delta rule (erase = beta) differs from the gated one by far more
    o_delta, _ = dgd(q, k, v, beta, g=g, erase=beta, initial_state=h0)
    assert ((o - o_delta).norm() / o_ref.norm()).item() > 1e-4


def test_self_check_and_flops():
    assert bench_dgd.self_check() < 1e-10
    # per head and 64-token chunk, K = V = 64: 2C²K + C²(K+V) + 8CKV + 2C²K + 2C²V
    C = 64
    per_chunk = 2 * C * C * 64 + C * C * 128 + 8 * C * 64 * 64 + 2 * C * C * 64 + 2 * C * C * 64
    assert bench_dgd.flops((1, 4096, 4, 64, 64)) == 4 * 64 * per_chunk
