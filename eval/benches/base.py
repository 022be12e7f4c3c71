"""What a bench is, and the registry that ``vlmzip eval`` finds benches in.

A bench is one class: its name (``--bench NAME``), the command-line options it reads, where its questions are
(a data option such as ``--data-root``, or a set that ships with vlmzip), the defaults it brings, and how it
loads, selects and describes its samples. ``register_bench`` makes it available to ``vlmzip eval``: the
``eval`` parser offers its name and options, and the runner asks it for samples. The runner itself knows no
bench by name.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from vlmzip.errors import InputError

if TYPE_CHECKING:  # building the `eval` parser imports the registry: it loads no data-side code
    from vlmzip.eval.samples import Sample
    from vlmzip.eval.video import Sampling

__all__ = ["Bench", "Loaded", "Option", "add_arguments", "bench_class", "benches", "choose", "register_bench"]


@dataclass(frozen=True)
class Option:
    """One command-line option: its flag and the keywords ``argparse.add_argument`` takes for it."""

    flag: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def of(flag: str, **kwargs: Any) -> Option:
        return Option(flag, kwargs)

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def default(self) -> Any:
        """Its value when not given (what argparse sets)."""
        return self.kwargs.get("default", False if self.kwargs.get("action") == "store_true" else None)

    def given(self, args: argparse.Namespace) -> bool:
        return getattr(args, self.dest, self.default) != self.default


@dataclass
class Loaded:
    """A bench's samples for one run: the samples (lazily made), what the run's config records about them
    (``questions``: how many this process evaluates), and how many questions the data holds."""

    samples: Iterator[Sample]
    described: dict[str, Any]
    total: int


class Bench:
    """One benchmark of ``vlmzip eval``. Subclass, set the class attributes, implement :meth:`load` and
    decorate with :func:`register_bench`.

    ``data`` is the option that names where the questions are (``--data-root DIR``, ``--data FILE``), with
    ``data_metavar`` for messages; ``bundled`` names the set that ships with vlmzip instead
    (``bundled.dataset_path`` kind): the bench then takes no data option but records the shipped set's path
    under ``data``'s name. ``options`` are the bench's other options; a subclass inherits its parent's (they
    are added to the parser once). ``default_model`` and ``default_policies`` are what runs when ``--model`` or
    ``--policy`` is not given (``None``: ``--model`` is required, only ``none`` runs). A bundled bench with an
    ``embedded_limit`` is what ``vlmzip eval`` runs with no arguments at all (on the CPU, at most that many
    questions); ``embedded_note`` says what that is. A ``generated`` bench makes its samples itself (from a
    generator and its own options): it takes no data option and has no data path.

    **Scoring.** A bench says how an answer is scored (:meth:`score`: one ``samples.jsonl`` row) and how rows add
    up (:meth:`summarize`: one policy's headline ``metric``, a fraction in [0, 1], with its interval); the runner
    writes, resumes and compares policies by that metric (``retained`` = metric / ``none``'s). The defaults are
    multiple choice: the letter read by the run's extractor, accuracy with Wilson intervals.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""  # how messages name the benchmark: "Video-MME"
    description: ClassVar[str] = ""  # what it evaluates ("a Video-MME copy"), in `--bench`'s help and messages
    data: ClassVar[Option | None] = None
    data_metavar: ClassVar[str] = ""
    bundled: ClassVar[str | None] = None
    options: ClassVar[tuple[Option, ...]] = ()
    default_model: ClassVar[str | None] = None
    default_policies: ClassVar[tuple[str, ...] | None] = None
    embedded_limit: ClassVar[int | None] = None
    embedded_note: ClassVar[str] = ""
    generated: ClassVar[bool] = False
    metric: ClassVar[str] = "accuracy"  # the headline key of each policy's result (results.json, tables)

    def data_path(self, args: argparse.Namespace) -> Path | None:
        """Where the questions are. A bundled bench's shipped set; a generated bench's: ``None``; otherwise its
        data option's value, checked by :func:`choose`."""
        if self.generated:
            return None
        if self.bundled is not None:
            from vlmzip.eval import bundled

            return bundled.dataset_path(self.bundled)
        assert self.data is not None, f"bench {self.name!r} has neither a data option nor a bundled set"
        return getattr(args, self.data.dest)

    def configure(self, args: argparse.Namespace, notes: list[str]) -> None:
        """Fill in defaults this bench brings for options left unset (``args`` is updated in place, so the
        run's config records them), with a note for each."""

    def load(
        self, args: argparse.Namespace, data: Path | None, sampling: Sampling, rank: int = 0, world: int = 1
    ) -> Loaded:
        """Read the questions at ``data`` (a generated bench: make them), select those ``args`` asks for, keep
        process ``rank``'s share of ``world`` (``parallel.shard``) and make their samples with ``sampling``."""
        raise NotImplementedError

    def score(self, sample: Sample, response: str | None, extractor: str) -> dict[str, Any]:
        """One ``samples.jsonl`` row: ``sample`` answered ``response`` (``None``: no answer). It must hold
        ``question_id`` and ``error`` (``None``, or why there is no answer); the runner adds the policy and the
        efficiency figures. Default: the letter ``extractor`` reads against the answer (``scoring.score``)."""
        from vlmzip.eval.scoring import score

        return score(sample, response, extractor=extractor).to_dict()

    def summarize(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """One policy's result from its rows: ``{metric: fraction or None, "ci95": [low, high] or None,
        "evaluated": n, "total": n, "unparsed": n, "summary": {...}}`` (``summary``: any breakdown, kept in
        results.json). Default: accuracy overall and by group (``scoring.summarize``)."""
        from vlmzip.eval.scoring import summarize

        summary = summarize(rows)
        overall = summary["overall"]
        head = {key: overall[key] for key in ("accuracy", "ci95", "evaluated", "total", "unparsed")}
        return {**head, "summary": summary}

    def details(self, results: dict[str, Any]) -> str | None:
        """A second table printed under the policies' table, or ``None``. Default: accuracy by category."""
        from vlmzip.eval.runner import category_table

        return category_table(results)


_BENCHES: dict[str, type[Bench]] = {}


def register_bench(cls: type[Bench]) -> type[Bench]:
    """Class decorator: make ``cls`` available as ``vlmzip eval --bench cls.name`` (register it before the
    command line is parsed: its options are added to the parser then)."""
    if not cls.name or cls.name in _BENCHES:
        raise ValueError(f"bench name {cls.name!r} is empty or already registered")
    if cls.data is None and cls.bundled is None and not cls.generated:
        raise ValueError(f"bench {cls.name!r} needs a data option, a bundled set or to be generated")
    _BENCHES[cls.name] = cls
    return cls


def benches() -> list[type[Bench]]:
    """The registered benches, in registration order."""
    return list(_BENCHES.values())


def bench_class(name: str) -> type[Bench]:
    """The bench registered as ``name``; :class:`InputError` naming the known benches otherwise."""
    if name not in _BENCHES:
        close = difflib.get_close_matches(name, list(_BENCHES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise InputError(f"unknown bench {name!r}.{hint} Known benches: {', '.join(_BENCHES)}")
    return _BENCHES[name]


def _data_options() -> list[tuple[type[Bench], Option]]:
    """Each data option once, with the bench that reads it from the user (not a bundled one)."""
    seen: dict[str, tuple[type[Bench], Option]] = {}
    for cls in benches():
        if cls.data is not None and cls.bundled is None:
            seen.setdefault(cls.data.dest, (cls, cls.data))
    return list(seen.values())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--bench`` (its choices the registered benches) and every bench's options, one group per bench
    that brings options of its own."""
    listed = ", ".join(
        f"{cls.name} ({cls.description}" + (f", {cls.data.flag})" if cls.bundled is None and cls.data else ")")
        for cls in benches()
    )
    embedded = next((cls for cls in benches() if _is_embedded(cls)), None)
    default = "from the data given" + (
        f", and with no model and no data {embedded.embedded_note} (CPU, at most {embedded.embedded_limit} questions)"
        if embedded
        else ""
    )
    parser.add_argument("--bench", choices=list(_BENCHES), help=f"{listed}; default: {default}")
    added: set[str] = set()
    for cls in benches():
        own = [o for o in (cls.data, *cls.options) if o is not None and o.dest not in added]
        if cls.bundled is not None:
            own = [o for o in own if o is not cls.data]
        if own:
            group = parser.add_argument_group(f"--bench {cls.name}")
            for option in own:
                group.add_argument(option.flag, **option.kwargs)
                added.add(option.dest)


def choose(args: argparse.Namespace) -> tuple[type[Bench], bool]:
    """The bench a command line asks for: ``--bench``, else the one whose data option is given, else (no model
    and no data either) the first bundled bench with a default model and an ``embedded_limit``, returned with
    ``True``. Checks that its data and model are given and that no other bench's option is; :class:`InputError`
    naming what is wrong."""
    data_options = _data_options()
    given = [(cls, option) for cls, option in data_options if option.given(args)]
    if len(given) > 1:
        shown = " or ".join(f"{option.flag} ({cls.description})" for cls, option in given)
        raise InputError(f"give {shown}, not both")
    bundled_benches = [cls for cls in benches() if cls.bundled is not None]
    run_bundled = " or ".join(f"--bench {cls.name}" for cls in bundled_benches)
    generated = [cls for cls in benches() if cls.generated]
    if generated:
        run_bundled += ", or generated scenes: " + " or ".join(f"--bench {cls.name}" for cls in generated)
    embedded = False
    if args.bench is not None:
        cls = bench_class(args.bench)
    elif given:
        cls = given[0][0]
    elif args.model is None:
        cls, embedded = _embedded(), True
    else:
        wanted = ", ".join(f"{option.flag} {cls.data_metavar} ({cls.title})" for cls, option in data_options)
        raise InputError(f"--model needs questions: {wanted}, or a bundled set: {run_bundled}")
    if cls.bundled is not None or cls.generated:
        if given:
            drop = "/".join(option.flag for _, option in data_options)
            own = " / ".join(f"--bench {c.name} {option.flag} {c.data_metavar}" for c, option in data_options)
            raise InputError(
                f"--bench {cls.name} runs {cls.description}: drop {drop}, or use {own} for your own questions"
            )
    else:
        assert cls.data is not None
        wanted = f"{cls.data.flag} {cls.data_metavar} ({cls.description})"
        others = [option.flag for _, option in given if option.dest != cls.data.dest]
        if others:
            raise InputError(f"--bench {cls.name} reads {wanted}, not {others[0]}")
        if not cls.data.given(args):
            raise InputError(f"--bench {cls.name} needs {wanted}; or run a bundled set: {run_bundled}")
    if args.model is None and cls.default_model is None:
        from vlmzip.eval import bundled

        raise InputError(
            f"--bench {cls.name} needs --model (a checkpoint directory, or a bundled model: "
            f"{', '.join(bundled.MODELS)})"
        )
    _check_options(cls, args)
    return cls, embedded


def _is_embedded(cls: type[Bench]) -> bool:
    return cls.bundled is not None and cls.default_model is not None and bool(cls.embedded_limit)


def _embedded() -> type[Bench]:
    """The bench ``vlmzip eval`` runs with no arguments: the first registered that can."""
    for cls in benches():
        if _is_embedded(cls):
            return cls
    raise InputError("no bench runs without arguments: pass --bench and its data (--model too)")


def _check_options(cls: type[Bench], args: argparse.Namespace) -> None:
    """Refuse options of another bench that ``cls`` does not read (they would be silently ignored)."""
    own = {o.dest for o in cls.options}
    for other in benches():
        foreign = [o for o in other.options if o.dest not in own]
        if foreign and any(o.given(args) for o in foreign):
            flags = [o.flag for o in foreign]
            if len(flags) == 1:
                what, none = f"{flags[0]} is a {other.title} option", "no such option"
            else:
                what = f"{', '.join(flags[:-1])} and {flags[-1]} are {other.title} options"
                none = "neither" if len(flags) == 2 else "none of them"
            raise InputError(f"{what}; --bench {cls.name} has {none}")
