"""Run every benchmark (``make bench``): each ``bench_*.py`` module's ``main()``, in one process
per module so that frameworks do not slow each other. Prints markdown tables; ``--out FILE``
also writes them there.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["core", "numpy", "keras", "torch", "ultralytics"]


def modules(only: list[str]) -> list[str]:
    found = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    ordered = [m for m in ORDER if m in found] + [m for m in found if m not in ORDER]
    return [m for m in ordered if not only or m in only]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("only", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--out", type=Path, help="also write the tables to this file")
    args = parser.parse_args(argv)
    env = dict(os.environ, KERAS_BACKEND="torch", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # Older OpenBLAS needs these on some CPUs; a current numpy runs slower with them.
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    tables, failed = [], []
    for name in modules(args.only):
        print(f"## {name}", flush=True)
        code = f"import bench_{name} as b; b.main()"
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=HERE, env=env, capture_output=True, text=True
        )
        print(proc.stdout, flush=True)
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            failed.append(name)
        tables.append(proc.stdout)
    if args.out:
        args.out.write_text("\n".join(tables))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
