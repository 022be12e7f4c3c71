"""The ``vlmzip`` command line: ``methods``, ``demo``, ``bench`` (``eval`` comes with the benchmarks)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except ValueError as error:  # vlmzip's errors name the problem: print it, not a traceback
        print(f"vlmzip: error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlmzip",
        description="Compress the visual tokens and KV cache of vision-language models without retraining.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    listing = commands.add_parser("methods", help="list the compression methods, their stage and parameters")
    listing.set_defaults(run=_methods)
    demo = commands.add_parser(
        "demo", help="compress a tiny random model of each family on the CPU and print what was kept"
    )
    demo.add_argument("--policy", default="vtc-cls:keep=0.5+fastv:layer=2,keep=0.5+knorm:keep=0.5")
    demo.add_argument("--family", action="append", help="model family (repeatable); default: all")
    demo.set_defaults(run=_demo)
    bench = commands.add_parser(
        "bench", help="time to first token, prefill, decode speed, memory and KV bytes against the unwrapped model"
    )
    _bench_module().add_arguments(bench)
    bench.set_defaults(run=lambda args: _bench_module().main(args))
    return parser


def _bench_module():
    from vlmzip.eval import bench  # imported on use: it is the only command that needs the benchmark code

    return bench


def _methods(args: argparse.Namespace) -> int:
    from vlmzip import methods

    print(f"{'method':<10} {'stage':<8} {'paper':<18} parameters (defaults)")
    for info in methods():
        params = ", ".join(f"{name}={value}" for name, value in info.params.items())
        print(f"{info.name:<10} {info.stage:<8} {info.paper:<18} {params}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from vlmzip.eval.demo import run_tiny
    from vlmzip.eval.tiny import FAMILIES

    for family in args.family or FAMILIES:
        print(run_tiny(family, args.policy), end="\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
