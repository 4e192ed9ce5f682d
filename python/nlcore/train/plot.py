"""The loss curve of a run: training loss (bits per byte, raw and smoothed) and validation
bits per byte against the step. A PNG through matplotlib when it is installed; otherwise a
plain SVG written here (no dependency), and the caller says so."""
from __future__ import annotations

import math
from pathlib import Path
from xml.sax.saxutils import escape
from typing import List, Optional, Sequence, Tuple

LN2 = math.log(2.0)


def _series(records: Sequence[dict]) -> Tuple[List[Tuple[int, float]], List[Tuple[int, float]]]:
    train = [(r["step"], r["loss"] / LN2) for r in records
             if r.get("event") == "train" and math.isfinite(r.get("loss", math.nan))]
    val = [(r["step"], r["val_bpb"]) for r in records
           if r.get("event") == "eval" and math.isfinite(r.get("val_bpb", math.nan))]
    return train, val


def _smooth(ys: Sequence[float], beta: float = 0.9) -> List[float]:
    out, avg = [], None
    for i, y in enumerate(ys):
        avg = y if avg is None else beta * avg + (1 - beta) * y
        out.append(avg)
    return out


def plot_losses(records: Sequence[dict], out_dir: Path, title: str) -> Tuple[Optional[Path], str]:
    """Writes out_dir/loss.png (or loss.svg); returns (path or None, a line for the user)."""
    train, val = _series(records)
    if not train and not val:
        return None, "loss curve: nothing to plot yet"
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        path = out_dir / "loss.svg"
        path.write_text(_svg(train, val, title))
        (out_dir / "loss.png").unlink(missing_ok=True)
        return path, (f"loss curve: {path} (matplotlib is not installed, so a plain SVG; "
                      f"`pip install matplotlib` gives loss.png)")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        xs, ys = zip(*train)
        ax.plot(xs, ys, color="tab:blue", alpha=0.25, lw=0.8)
        ax.plot(xs, _smooth(ys), color="tab:blue", lw=1.5, label="train (smoothed)")
    if val:
        xs, ys = zip(*val)
        ax.plot(xs, ys, "o-", color="tab:orange", lw=1.5, ms=4, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per byte")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out_dir / "loss.png"
    fig.savefig(path)
    plt.close(fig)
    (out_dir / "loss.svg").unlink(missing_ok=True)
    return path, f"loss curve: {path}"


def _svg(train, val, title: str) -> str:
    W, H, L, R, T, B = 720, 400, 60, 20, 40, 50
    pts = train + val
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    if x1 == x0:
        x1 = x0 + 1
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def sx(x):
        return L + (x - x0) / (x1 - x0) * (W - L - R)

    def sy(y):
        return H - B - (y - y0) / (y1 - y0) * (H - T - B)

    def poly(ps, color, width, opacity=1.0):
        d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in ps)
        return (f'<polyline fill="none" stroke="{color}" stroke-width="{width}" '
                f'stroke-opacity="{opacity}" points="{d}"/>')

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="14">{_esc(title)}</text>',
           f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>',
           f'<text x="{(L + W - R) / 2}" y="{H - 12}" text-anchor="middle">step</text>',
           f'<text x="16" y="{(T + H - B) / 2}" text-anchor="middle" '
           f'transform="rotate(-90 16 {(T + H - B) / 2})">bits per byte</text>']
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        x = x0 + (x1 - x0) * i / 4
        out.append(f'<text x="{L - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.2f}</text>')
        out.append(f'<line x1="{L}" y1="{sy(y):.1f}" x2="{W - R}" y2="{sy(y):.1f}" '
                   f'stroke="#ddd"/>')
        out.append(f'<text x="{sx(x):.1f}" y="{H - B + 16}" text-anchor="middle">'
                   f'{x:.0f}</text>')
    if train:
        out.append(poly(train, "#1f77b4", 1, 0.3))
        sm = list(zip([p[0] for p in train], _smooth([p[1] for p in train])))
        out.append(poly(sm, "#1f77b4", 2))
    if val:
        out.append(poly(val, "#ff7f0e", 2))
        out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="#ff7f0e"/>'
                for x, y in val]
    out.append(f'<text x="{W - R - 150}" y="{T + 14}" fill="#1f77b4">train (smoothed)</text>')
    out.append(f'<text x="{W - R - 150}" y="{T + 30}" fill="#ff7f0e">validation</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _esc(s) -> str:
    return escape(str(s))   # &, <, > as XML entities
