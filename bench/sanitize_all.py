"""Every op's compute-sanitizer cases in one process (scripts/gpu.sh sanitize). Exit status:
2 if any op hit a CUDA error, else 1 if any case failed, else 0."""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import (sanitize_dgd, sanitize_memory_mlp, sanitize_newton_schulz,  # noqa: E402
                   sanitize_self_modifying)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    worst = 0
    for mod in (sanitize_newton_schulz, sanitize_dgd, sanitize_memory_mlp,
                sanitize_self_modifying):
        rc = mod.main(argv)
        worst = max(worst, rc)
        if rc == 2:  # the CUDA context is unusable after a fault
            break
    print(f"sanitize cases done: {'all ok' if worst == 0 else f'exit {worst}'}", flush=True)
    return worst


if __name__ == "__main__":
    sys.exit(main())
