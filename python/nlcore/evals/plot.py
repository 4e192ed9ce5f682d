"""Heat maps of the evaluations, one panel per model side by side (accuracy by depth x
length, by pairs x length; the continual-learning matrix). A PNG through matplotlib when it
is installed; otherwise a plain SVG written here (no dependency), as nlcore.train.plot does
for the loss curve."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape
from typing import List, Optional, Sequence, Tuple


@dataclass
class Panel:
    """One heat map: `values[r][c]` (None: no value, drawn blank), its row and column labels
    and axis titles."""
    title: str
    values: List[List[Optional[float]]]
    row_labels: Sequence[str]
    col_labels: Sequence[str]
    row_title: str
    col_title: str


def _finite(values) -> List[float]:
    return [v for row in values for v in row
            if v is not None and isinstance(v, (int, float)) and math.isfinite(v)]


def _range(panels: Sequence[Panel], vmin: Optional[float], vmax: Optional[float]
           ) -> Tuple[float, float]:
    vals = [v for p in panels for v in _finite(p.values)]
    lo = vmin if vmin is not None else (min(vals) if vals else 0.0)
    hi = vmax if vmax is not None else (max(vals) if vals else 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def plot_heatmaps(panels: Sequence[Panel], stem: Path, title: str, fmt: str = "{:.0%}",
                  vmin: Optional[float] = None, vmax: Optional[float] = None,
                  reverse: bool = False, label: str = "") -> Tuple[Path, str]:
    """Writes stem.png (or stem.svg) and removes the other one; returns (path, a line for the
    user). `reverse`: low values get the bright end of the colour map (bits per byte)."""
    stem = Path(stem)
    lo, hi = _range(panels, vmin, vmax)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        path = stem.with_suffix(".svg")
        path.write_text(_svg(panels, title, fmt, lo, hi, reverse, label))
        stem.with_suffix(".png").unlink(missing_ok=True)
        return path, (f"plot: {path} (matplotlib is not installed, so a plain SVG; "
                      f"`pip install matplotlib` gives a PNG)")
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(1.2 + 3.6 * n, 3.8), dpi=120, squeeze=False)
    cmap = plt.get_cmap("viridis_r" if reverse else "viridis").copy()
    cmap.set_bad("#dddddd")
    im = None
    for ax, p in zip(axes[0], panels):
        data = [[math.nan if v is None else v for v in row] for row in p.values]
        im = ax.imshow(data, cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
        ax.set_xticks(range(len(p.col_labels)), list(p.col_labels))
        ax.set_yticks(range(len(p.row_labels)), list(p.row_labels))
        ax.set_xlabel(p.col_title)
        ax.set_ylabel(p.row_title)
        ax.set_title(p.title, fontsize=10)
        for r, row in enumerate(p.values):
            for c, v in enumerate(row):
                if v is not None and math.isfinite(v):
                    bright = (v - lo) / (hi - lo)
                    bright = 1 - bright if reverse else bright
                    ax.text(c, r, fmt.format(v), ha="center", va="center", fontsize=8,
                            color="black" if bright > 0.6 else "white")
    if im is not None:
        cb = fig.colorbar(im, ax=list(axes[0]), shrink=0.85)
        if label:
            cb.set_label(label)
    fig.suptitle(title, fontsize=11)
    path = stem.with_suffix(".png")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    stem.with_suffix(".svg").unlink(missing_ok=True)
    return path, f"plot: {path}"


# viridis at 0, 0.25, 0.5, 0.75, 1
_STOPS = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]


def _colour(t: float) -> Tuple[str, bool]:
    t = min(1.0, max(0.0, t))
    x = t * (len(_STOPS) - 1)
    i = min(int(x), len(_STOPS) - 2)
    f = x - i
    rgb = [round(a + (b - a) * f) for a, b in zip(_STOPS[i], _STOPS[i + 1])]
    return "#%02x%02x%02x" % tuple(rgb), t > 0.6


def _esc(s) -> str:
    return escape(str(s))   # &, <, > as XML entities


def _svg(panels: Sequence[Panel], title: str, fmt: str, lo: float, hi: float,
         reverse: bool, label: str) -> str:
    cell_w, cell_h, left, top, gap, bottom = 56, 28, 90, 60, 50, 60
    widths = [left + cell_w * max(1, len(p.col_labels)) for p in panels]
    height = top + cell_h * max(max(1, len(p.row_labels)) for p in panels) + bottom
    W = sum(widths) + gap * (len(panels) - 1) + 90
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{height}" fill="white"/>',
           f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="14">{_esc(title)}</text>']
    x0 = 0
    for p, w in zip(panels, widths):
        gx, gy = x0 + left, top
        nr, nc = len(p.row_labels), len(p.col_labels)
        out.append(f'<text x="{gx + cell_w * nc / 2}" y="{top - 18}" text-anchor="middle" '
                   f'font-size="12">{_esc(p.title)}</text>')
        for r in range(nr):
            out.append(f'<text x="{gx - 6}" y="{gy + cell_h * r + cell_h / 2 + 4}" '
                       f'text-anchor="end">{_esc(p.row_labels[r])}</text>')
            for c in range(nc):
                v = p.values[r][c] if r < len(p.values) and c < len(p.values[r]) else None
                x, y = gx + cell_w * c, gy + cell_h * r
                if v is None or not math.isfinite(v):
                    out.append(f'<rect x="{x}" y="{y}" width="{cell_w}" height="{cell_h}" '
                               f'fill="#dddddd" stroke="white"/>')
                    continue
                t = (v - lo) / (hi - lo)
                colour, bright = _colour(1 - t if reverse else t)
                out.append(f'<rect x="{x}" y="{y}" width="{cell_w}" height="{cell_h}" '
                           f'fill="{colour}" stroke="white"/>')
                out.append(f'<text x="{x + cell_w / 2}" y="{y + cell_h / 2 + 4}" '
                           f'text-anchor="middle" fill="{"black" if bright else "white"}">'
                           f'{_esc(fmt.format(v))}</text>')
        for c in range(nc):
            out.append(f'<text x="{gx + cell_w * c + cell_w / 2}" y="{gy + cell_h * nr + 16}" '
                       f'text-anchor="middle">{_esc(p.col_labels[c])}</text>')
        out.append(f'<text x="{gx + cell_w * nc / 2}" y="{gy + cell_h * nr + 36}" '
                   f'text-anchor="middle">{_esc(p.col_title)}</text>')
        cy = gy + cell_h * nr / 2
        out.append(f'<text x="{x0 + 14}" y="{cy}" text-anchor="middle" '
                   f'transform="rotate(-90 {x0 + 14} {cy})">{_esc(p.row_title)}</text>')
        x0 += w + gap
    # the colour scale
    sx, sy, sh = W - 60, top, 120
    for i in range(20):
        t = 1 - i / 19
        colour, _ = _colour(1 - t if reverse else t)
        out.append(f'<rect x="{sx}" y="{sy + i * sh / 20:.1f}" width="14" '
                   f'height="{sh / 20 + 0.5:.1f}" fill="{colour}"/>')
    out.append(f'<text x="{sx + 18}" y="{sy + 8}">{_esc(fmt.format(hi))}</text>')
    out.append(f'<text x="{sx + 18}" y="{sy + sh}">{_esc(fmt.format(lo))}</text>')
    if label:
        out.append(f'<text x="{sx}" y="{sy + sh + 18}">{_esc(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
