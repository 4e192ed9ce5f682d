"""The GPU harness itself (bench/sanitize_*.py, bench/sanitize_all.py), on the CPU: the cases
hand in distinct state tensors, and the op-selection plumbing works. The first H200 run
reported an "initial-state mismatch" that was the harness: `[p, p_out] * 2` made p and acc one
tensor, so the CPU leaf's .grad summed both gradients (2026-11-26)."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import sanitize_all, sanitize_memory_mlp, sanitize_self_modifying  # noqa: E402


def test_state_tensors_are_distinct_and_grads_separate():
    gen = torch.Generator().manual_seed(0)
    x, state = sanitize_memory_mlp.inputs(2, 40, 1, 32, 2, True, True, 8, gen)
    assert len({id(t) for t in state}) == len(state)
    out = sanitize_memory_mlp.run(x, state, torch.device("cpu"), torch.float32, 8, None)
    d_p_in, d_acc_in = out[15], out[17]  # y, 7 finals, dx dk dv deta dg, then the state's
    # a complete first chunk: dP0 = -μ dA0 (μ = 0.9 in the harness); the aliased harness gave
    # both entries dP0 + dA0
    assert torch.allclose(d_p_in, -0.9 * d_acc_in, rtol=1e-5, atol=1e-8)
    assert not torch.allclose(d_p_in, d_acc_in)
    # the inputs are not turned into leaves with accumulated grads by a run
    assert all(t.grad is None for t in state if t.is_floating_point())
    _, sm_state = sanitize_self_modifying.inputs(1, 20, 1, 32, 2, 1, True, True, True, 6, gen)
    assert len({id(t) for t in sm_state}) == len(sm_state)


def test_sanitize_all_selects_ops(capsys):
    assert sanitize_all.main(["--device", "cpu", "--quick", "--ops", "memory_mlp"]) == 0
    out = capsys.readouterr().out
    assert "sanitize memory_mlp cases done: 0 failed" in out
    assert "newton_schulz" not in out and "self_modifying cases" not in out
    assert sanitize_all.main(["--ops", "nope"]) == 1
    assert "unknown op" in capsys.readouterr().err
