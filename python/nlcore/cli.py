"""The `nlcore` command. Today: `nlcore bench`; `train`, `eval` and `generate` arrive with
the Hope model (issues 7–8)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional


def _find_bench_root() -> Optional[Path]:
    """bench/ lives in the source tree, not in the wheel: look from the working directory up."""
    for d in [Path.cwd(), *Path.cwd().parents]:
        if (d / "bench" / "run.py").is_file() and (d / "bench" / "common.py").is_file():
            return d
    return None


def _bench(argv: List[str]) -> int:
    root = _find_bench_root()
    if root is None:
        print("nlcore bench: the benchmarks live in the source tree (bench/); run this from a "
              "checkout of nlcore", file=sys.stderr)
        return 2
    sys.path.insert(0, str(root))
    from bench.run import main as bench_main

    return bench_main(argv)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="nlcore", description=__doc__)
    parser.add_argument("command", choices=["bench"], help="what to run")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        print("\n  nlcore bench [--quick] [--out DIR] [--ops ...]   op benchmarks "
              "(see `nlcore bench --help`)")
        return 0 if argv else 2
    if argv[0] == "bench":
        return _bench(argv[1:])
    parser.parse_args(argv[:1])
    return 2


if __name__ == "__main__":
    sys.exit(main())
