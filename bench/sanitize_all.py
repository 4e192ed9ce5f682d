"""Every op's compute-sanitizer cases in one process (scripts/gpu.sh sanitize). Exit status:
2 if any op hit a CUDA error, else 1 if any case failed, else 0.

    python bench/sanitize_all.py [--ops memory_mlp,self_modifying] [--device cuda] [--quick]
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import (sanitize_dgd, sanitize_memory_mlp, sanitize_newton_schulz,  # noqa: E402
                   sanitize_self_modifying)


OPS = {"newton_schulz": sanitize_newton_schulz, "dgd": sanitize_dgd,
       "memory_mlp": sanitize_memory_mlp, "self_modifying": sanitize_self_modifying}


def main(argv=None) -> int:
    """[--ops a,b] (default: every op) and the per-op arguments (--device, --quick)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ops = list(OPS)
    if "--ops" in argv:
        i = argv.index("--ops")
        if i + 1 >= len(argv):
            print("sanitize_all: --ops needs a comma list", file=sys.stderr)
            return 1
        ops = [o for o in argv[i + 1].split(",") if o]
        del argv[i:i + 2]
        bad = [o for o in ops if o not in OPS]
        if bad:
            print(f"sanitize_all: unknown op(s) {bad}; choose from {sorted(OPS)}",
                  file=sys.stderr)
            return 1
    worst = 0
    for mod in (OPS[o] for o in ops):
        rc = mod.main(argv)
        worst = max(worst, rc)
        if rc == 2:  # the CUDA context is unusable after a fault
            break
    print(f"sanitize cases done: {'all ok' if worst == 0 else f'exit {worst}'}", flush=True)
    return worst


if __name__ == "__main__":
    sys.exit(main())
