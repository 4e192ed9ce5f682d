"""The README's results table from the runs of scripts/results_cpu.sh (JSON in, markdown out).

    python scripts/results_table.py OUTDIR
"""
import datetime
import json
import platform
import sys
from pathlib import Path


def load(p: Path):
    return json.loads(p.read_text()) if p.is_file() else None


def pct(x):
    return "-" if x is None else f"{100 * x:.1f} %"


def num(x, d=3):
    return "-" if x is None else f"{x:.{d}f}"


def main(out: Path) -> None:
    models = ("hope", "transformer")
    rows = []
    # bits per byte on the embedded corpus' validation split: the better lr of the sweep
    best = {}
    for m in models:
        runs = []
        for d in sorted(out.glob(f"bpb-{m}-*")):
            rec = load(d / "eval.json") if d.is_dir() else None
            if rec is not None:
                bpb = rec.get("bits_per_byte")
                runs.append((float("inf") if bpb is None else bpb, d.name.split("-", 2)[2], rec))
        best[m] = min(runs, key=lambda r: r[0]) if runs else None
    steps = next((best[m][2].get("step") for m in models if best[m]), None)
    rows.append(["validation bits per byte (embedded corpus; lower is better)"] +
                [f"{num(best[m][0])} (lr {best[m][1]})" if best[m] else "-" for m in models])
    for task, what in (("niah", "needle in a haystack, test accuracy"),
                       ("mqar", "multi-query associative recall, test accuracy")):
        rec = load(out / f"eval-{task}" / f"{task}.json")
        if rec is None:
            continue
        cells = []
        for m in models:
            r = rec["models"].get(m) or {}
            t = r.get("test") or {}
            cells.append(f"{pct(t.get('accuracy'))} (lr {r.get('best_lr')})")
        rows.append([f"{what} (chance {100 * rec['chance']:g} %)"] + cells)
    rec = load(out / "eval-continual" / "continual.json")
    if rec is not None:
        for key, what in (("final_average", "continual: final average test bits per byte"),
                          ("average_forgetting", "continual: average forgetting (bits per byte)")):
            rows.append([what] + [num(((rec["models"].get(m) or {}).get("summary") or {})
                                      .get(key)) for m in models])
    print("| | Hope | Transformer |")
    print("| --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    cpu = "?"
    if Path("/proc/cpuinfo").exists():
        info = Path("/proc/cpuinfo").read_text().splitlines()
        names = [l.split(":", 1)[1].strip() for l in info if l.startswith("model name")]
        cpu = f"{names[0] if names else platform.machine()}, {len(names)} CPU threads"
    some = next((load(d / "eval.json") for d in sorted(out.glob("bpb-*")) if d.is_dir()), None)
    when = datetime.datetime.fromtimestamp(out.stat().st_mtime, datetime.timezone.utc)
    print(f"\nTiny preset (about 127k parameters each), {cpu}, torch "
          f"{(some or {}).get('torch', '?')}, {when:%Y-%m-%d}; bits per byte after {steps} "
          f"steps of 32 windows x 32 bytes (AdamW), the tasks at scripts/results_cpu.sh's "
          f"step counts; the better learning rate of 1e-3 / 3e-3 per model and task.")

if __name__ == "__main__":
    main(Path(sys.argv[1]))
