"""The ``vlmzip`` command line: ``methods``, ``families``, ``demo``, ``bench``, ``eval``, ``models``, ``report``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vlmzip.registry import FamilyInfo, MethodInfo


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
    listing.add_argument("--markdown", action="store_true", help="as the README's table, with each paper")
    listing.set_defaults(run=_methods)
    supported = commands.add_parser("families", help="list the model families vlmzip has an adapter for")
    supported.add_argument("--markdown", action="store_true", help="as the README's table")
    supported.set_defaults(run=_families)
    demo = commands.add_parser(
        "demo", help="compress a tiny random model of each family on the CPU and print what was kept"
    )
    demo.add_argument("--policy", default="vtc-cls:keep=0.5+fastv:layer=2,keep=0.5+knorm:keep=0.5")
    demo.add_argument("--family", action="append", help="model family (repeatable); default: all")
    demo.set_defaults(run=_demo)
    bench = commands.add_parser(
        "bench", help="time to first token, prefill, decode speed, memory and KV bytes against the unwrapped model"
    )
    _bench_arguments(bench)
    bench.set_defaults(run=lambda args: _bench_module().main(args))
    evaluate = commands.add_parser(
        "eval", help="accuracy of each policy on a benchmark (Video-MME, a JSONL file, bundled sets), beside its cost"
    )
    _eval_arguments(evaluate)
    evaluate.set_defaults(run=lambda args: _eval_module().main(args))
    shipped = commands.add_parser("models", help="list the small trained models and test sets that ship with vlmzip")
    shipped.set_defaults(run=_models)
    report = commands.add_parser("report", help="one table (and a plot) of the policies of `vlmzip eval` runs")
    report.add_argument("runs", type=Path, nargs="+", help="run directories (the --out of vlmzip eval)")
    report.add_argument("--out", type=Path, help="write report.md, report.json (and report.png) there")
    report.add_argument("--plot", action="store_true", help="also draw report.png (needs the plot extra)")
    report.add_argument(
        "--mixed-scoring",
        action="store_true",
        help="put runs scored differently (answer extractor, subtitles style) in one table; a column names each",
    )
    report.set_defaults(run=_report)
    return parser


def _models(args: argparse.Namespace) -> int:
    from vlmzip.eval import bundled

    for row in bundled.models():
        columns = f"{row['name']:<11} {row['architecture']:<36} {row['language_model']:<16} {row['dtype']:<9}"
        print(f"{columns} {row['mib']:>5.2f} MiB  {row['path']}")
    for kind in bundled.DATASETS:
        print(f"{kind + ' set':<11} {'test split':<36} {'':<16} {'':<9} {'':>9}  {bundled.dataset_path(kind)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from vlmzip.eval import report

    return report.main(args)


def _eval_module():
    from vlmzip.eval import runner

    return runner


# The subcommands' options live here (an eval bench's own options in its class, vlmzip.eval.benches): building
# the parser loads no benchmark or data code, only the command that runs does.
def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--arch", default="llava-1.5-7b", help="llava-1.5-7b, qwen2.5-vl-7b, gemma-3-4b, or tiny-<family> (random)"
    )
    source.add_argument("--model", help="a checkpoint directory (loaded offline)")
    parser.add_argument("--policy", action="append", default=[], help="a policy to compare (repeatable)")
    parser.add_argument("--batch-size", type=int, action="append", help="repeatable; default 1")
    parser.add_argument("--images", type=int, default=1, help="images per sample")
    parser.add_argument("--frames", type=int, default=0, help="video frames per sample (Qwen)")
    parser.add_argument("--frame-size", type=int, default=336, help="Qwen image/frame side in pixels")
    parser.add_argument("--text-tokens", type=int, default=40)
    parser.add_argument(
        "--ideal",
        type=int,
        action="append",
        metavar="N",
        help="repeatable; the unwrapped model's prompt pass with only N visual tokens per sample in its language model",
    )
    parser.add_argument(
        "--ideal-at-eq",
        action="store_true",
        help="after each policy, the ideal at the equivalent visual tokens it measured (rounded)",
    )
    parser.add_argument(
        "--hf-cache",
        action="append",
        metavar="BACKEND[:BITS]",
        help="repeatable; the unwrapped model on transformers' QuantizedCache (fp8, quanto:2, quanto:4, hqq:4)",
    )
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cuda or cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--out", type=Path, help="write results.json there")


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    from vlmzip.eval import benches  # the registry and the benches' classes only, no data-side code
    from vlmzip.eval.extractors import EXTRACTORS

    benches.add_arguments(parser)  # --bench and each bench's own options (its data, filters)
    parser.add_argument("--model", help="a checkpoint directory, loaded offline, or a bundled model's name")
    parser.add_argument(
        "--policy",
        action="append",
        default=[],
        help="repeatable; 'none' always runs first (bundled sets: a default list)",
    )
    parser.add_argument("--out", type=Path, help="run directory (config, samples, results); default: a new runs/eval-*")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--frames", type=int, help="frames per video (default 32 unless --fps)")
    parser.add_argument("--sampler", help="linspace (lmms-eval; the default) or centered (VLMEvalKit)")
    parser.add_argument("--fps", type=float, help="sample at this rate instead of a frame count")
    parser.add_argument("--max-frames", type=int)
    parser.add_argument("--max-side", type=int, help="resize frames so their longer side is at most this")
    parser.add_argument(
        "--template", help="the prompt: official (the Video-MME authors'; default), lmms-eval or vlmevalkit"
    )
    parser.add_argument(
        "--extractor",
        choices=EXTRACTORS,
        help="how the answer letter is read: vlmzip (default), lmms-eval (0.7.3's ranked extractor) or "
        "videomme-authors (the authors' regex, lmms-eval up to 0.7.1); see vlmzip.eval.extractors",
    )
    parser.add_argument(
        "--limit", type=int, help="at most this many questions: Video-MME stratified by duration, mcq the first N"
    )
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--missing", default="record", choices=["record", "fail"])
    parser.add_argument("--max-new-tokens", type=int, help="default 16")
    parser.add_argument("--decode-workers", type=int, default=0, help="threads decoding upcoming videos")
    parser.add_argument("--device", help="auto (cuda if available; the default), cuda or cpu")
    parser.add_argument(
        "--dtype", choices=["bfloat16", "float16", "float32"], help="default: bfloat16 on a GPU, float32 on the CPU"
    )


def _bench_module():
    from vlmzip.eval import bench  # imported on use: it is the only command that needs the benchmark code

    return bench


def _methods(args: argparse.Namespace) -> int:
    from vlmzip import methods

    if args.markdown:
        print(method_table(methods()))
        return 0
    print(f"{'method':<12} {'stage':<8} {'paper':<18} parameters (defaults)")
    for info in methods():
        print(f"{info.name:<12} {info.stage:<8} {info.paper:<18} {', '.join(info.param_strings())}")
    return 0


def _families(args: argparse.Namespace) -> int:
    from vlmzip import families

    if args.markdown:
        print(family_table(families()))
        return 0
    for info in families():
        print(f"{info.family:<12} {', '.join(info.model_types):<12} {info.notes}")
    return 0


def method_table(infos: Sequence[MethodInfo]) -> str:
    """The README's method table: name, stage, paper, parameters, and how vlmzip's version deviates."""
    rows = ["| method | stage | paper | parameters (defaults) | deviation from the paper |", "|---|---|---|---|---|"]
    for info in infos:
        arxiv = info.paper.removeprefix("arXiv:")
        paper = f"{info.title} ([{info.paper}](https://arxiv.org/abs/{arxiv}))" if arxiv != info.paper else info.title
        params = ", ".join(f"`{param}`" for param in info.param_strings())
        rows.append(f"| `{info.name}` | {info.stage} | {paper} | {params} | {info.deviation} |")
    return "\n".join(rows)


def family_table(infos: Sequence[FamilyInfo]) -> str:
    """The README's model table: family, the ``config.model_type`` values it serves, notes."""
    rows = ["| family | `model_type` | notes |", "|---|---|---|"]
    for info in infos:
        types = ", ".join(f"`{t}`" for t in info.model_types)
        rows.append(f"| {info.family} | {types} | {info.notes} |")
    return "\n".join(rows)


def _demo(args: argparse.Namespace) -> int:
    from vlmzip.eval.demo import run_tiny
    from vlmzip.eval.tiny import FAMILIES

    for family in args.family or FAMILIES:
        print(run_tiny(family, args.policy), end="\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
