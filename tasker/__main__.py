"""``python -m tasker demo`` (the live demo) and ``python -m tasker bench`` (the benchmarks)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "demo":
        from ._demo import main as demo

        return demo(args[1:])
    if args and args[0] == "bench":
        from ._bench import main as bench

        return bench(args[1:])
    print("usage: python -m tasker {demo,bench} [--help]", file=sys.stderr)
    return 0 if args and args[0] in ("-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main())
