"""Newton–Schulz coefficient sets (DESIGN §3.4), resolved once for the op and the reference."""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple, Union

MUON = (3.4445, -4.7750, 2.0315)

# Amsel et al. 2025 (arXiv 2505.16932), Algorithm 1; every tuple but the last is divided by
# (1.01, 1.01**3, 1.01**5) and the normalization is X / (||X||_F * 1.01 + eps).
_POLAR_EXPRESS_RAW = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
POLAR_EXPRESS = tuple(
    (a / 1.01, b / 1.01**3, c / 1.01**5) for (a, b, c) in _POLAR_EXPRESS_RAW[:-1]
) + (_POLAR_EXPRESS_RAW[-1],)
POLAR_EXPRESS_NORM_SCALE = 1.01

Coefficients = Union[str, Sequence[float], Sequence[Sequence[float]]]


def _triple(t, what: str) -> Tuple[float, float, float]:
    try:
        vals = tuple(float(x) for x in t)
    except TypeError:
        raise ValueError(f"{what} must be a triple (a, b, c) of numbers, got {t!r}") from None
    if len(vals) != 3:
        raise ValueError(f"{what} must be a triple (a, b, c), got {len(vals)} values: {t!r}")
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{what} must be finite, got {t!r}")
    return vals  # type: ignore[return-value]


def resolve(coefficients: Coefficients, steps: int) -> Tuple[List[Tuple[float, float, float]], float, bool]:
    """Return (per-step triples, norm_scale, norm_additive) for `coefficients` and `steps`.

    norm_additive=False: X / max(||X|| * norm_scale, eps) ("muon" and explicit triples);
    norm_additive=True:  X / (||X|| * norm_scale + eps) ("polar_express").
    """
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps}")
    if isinstance(coefficients, str):
        if coefficients == "muon":
            return [MUON] * steps, 1.0, False
        if coefficients == "polar_express":
            table = list(POLAR_EXPRESS)
            per_step = [table[min(i, len(table) - 1)] for i in range(steps)]
            return per_step, POLAR_EXPRESS_NORM_SCALE, True
        raise ValueError(
            f"coefficients must be 'muon', 'polar_express', a triple (a, b, c) or a list of "
            f"{steps} triples; got the string {coefficients!r}")
    try:
        items = list(coefficients)
    except TypeError:
        raise ValueError(f"coefficients must be a string, a triple or a list of triples, "
                         f"got {type(coefficients).__name__}") from None
    if len(items) == 3 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in items):
        return [_triple(items, "coefficients")] * steps, 1.0, False
    if len(items) != steps:
        raise ValueError(f"coefficients: a list of triples must have one triple per step "
                         f"(steps={steps}), got {len(items)}")
    return [_triple(t, f"coefficients[{i}]") for i, t in enumerate(items)], 1.0, False
