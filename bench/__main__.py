"""`python -m bench [NAME [ARGS...]]`: run one benchmark, or every one in turn.

A benchmark is either a module `bench/<name>.py` or a folder `bench/<name>/run.py`; both are
run as `__main__` with ARGS as their command line."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def available() -> dict[str, Path]:
    found = {p.stem: p for p in HERE.glob("*.py") if not p.name.startswith("_")}
    found.update({p.parent.name: p for p in HERE.glob("*/run.py")})
    return dict(sorted(found.items()))


def run(name: str, args: list[str]) -> None:
    path = available()[name]
    sys.argv = [str(path), *args]
    if path.name == "run.py":
        runpy.run_path(str(path), run_name="__main__")
    else:
        runpy.run_module(f"bench.{name}", run_name="__main__", alter_sys=True)


def main() -> int:
    benches = available()
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help", "list"):
        print("benchmarks:", ", ".join(benches))
        return 0
    if len(sys.argv) > 1:
        if sys.argv[1] not in benches:
            print(f"unknown benchmark {sys.argv[1]!r}; known: {', '.join(benches)}", file=sys.stderr)
            return 2
        run(sys.argv[1], sys.argv[2:])
        return 0
    for name in benches:
        print(f"=== {name}", flush=True)
        try:
            run(name, [])
        except SystemExit as exc:
            if exc.code not in (None, 0):
                print(f"{name} exited with {exc.code}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
