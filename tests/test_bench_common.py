"""bench/common.py's table and record naming: what a GPU run's log and files look like."""
import re

from bench.common import Ceilings, format_summary, write_record


def _row(impl, ms=None, error=None, shape=(1, 8)):
    return {"op": "dgd", "mode": "fwd", "shape": list(shape), "dtype": "bfloat16",
            "impl": impl, "ref_impl": "torch_chunk", "ms": ms, "error": error,
            "roofline_frac": None if ms is None else 0.5,
            "speedup_vs_ref": None if ms is None else 2.0 / ms}


def test_summary_tells_skipped_from_failed():
    rows = [_row("torch_chunk", 2.0, shape=(1, 8)), _row("nlcore", 1.0, shape=(1, 8)),
            _row("torch_chunk", None, "skipped: time limit (60 s) reached", shape=(2, 8)),
            _row("nlcore", None, "skipped: time limit (60 s) reached", shape=(2, 8)),
            _row("torch_chunk", 2.0, shape=(3, 8)),
            _row("nlcore", None, "RuntimeError: boom", shape=(3, 8)),
            _row("torch_chunk", 2.0, shape=(4, 8)),
            _row("nlcore", None, "interrupted", shape=(4, 8))]
    lines = {line.split()[2]: line for line in format_summary(rows).splitlines()[2:]}
    assert "2.00x" in lines["1x8"]
    assert lines["2x8"].split()[-1] == "skipped"
    assert lines["3x8"].split()[-1] == "error"
    assert lines["4x8"].split()[-1] == "interrupted"


def test_record_name_is_a_plain_file_name(tmp_path):
    """A commit label such as 'abc1234+fix' must not put '+' (or '/') in the file name: the
    device tool brings back only names of letters, digits, '.', '_' and '-'."""
    env = {"date": "2026-11-26T03:26:10+00:00", "device_name": "NVIDIA H200",
           "git_commit": "c22d0+x/y"}
    ceil = Ceilings(copy_gbps=1.0, matmul_tflops=1.0, matmul_dtype="float32", matmul_n=8,
                    copy_bytes=8)
    path = write_record(tmp_path, env, ceil, [], {})
    assert path.exists()
    assert re.fullmatch(r"[A-Za-z0-9._-]+", path.name), path.name
