"""Running a fidelity sweep: its cells measured in this process or in worker processes, each one appended to a
JSON-lines results file the moment it is done, so a killed sweep keeps what it measured and ``--resume``
measures only the rest.

The file's first line is a header naming the questions (``{"fidelity": {...}}``); every other line is a
``Cell``. Resuming checks the header, so the cells of one file always answered the same questions and pair up.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

from vlmzip.errors import VlmzipError
from vlmzip.eval.fidelity_tables import Cell

__all__ = ["Progress", "append", "open_results", "read_results", "run", "worker_threads"]


class _Job(Protocol):
    @property
    def key(self) -> Hashable: ...


J = TypeVar("J", bound=_Job)


def read_results(path: Path) -> tuple[dict[str, Any] | None, list[Cell]]:
    """The header and the cells of a results file; a last line cut short by a kill is ignored."""
    header, cells = None, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line being written when the sweep was killed
        if number == 0 and "fidelity" in record:
            header = record["fidelity"]
        elif "correct" in record:
            cells.append(Cell.from_json(record))
    return header, cells


def open_results(path: Path, header: Mapping[str, Any], resume: bool) -> list[Cell]:
    """The cells already measured in ``path`` when resuming a sweep of the same questions; otherwise start the
    file with ``header``. Refuses to overwrite a sweep, and to resume one of other questions."""
    if path.exists() and path.stat().st_size:
        if not resume:
            raise VlmzipError(f"{path} holds a sweep already: pass --resume to continue it, or another --results")
        old, cells = read_results(path)
        if old != dict(header):
            raise VlmzipError(f"{path} was started for other questions ({old}), not {dict(header)}")
        with path.open("rb+") as file:  # drop a half-written last line, so appended cells start on their own
            text = file.read()
            file.truncate(text.rfind(b"\n") + 1)
        return cells
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"fidelity": dict(header)}) + "\n", encoding="utf-8")
    return []


def append(path: Path, cell: Cell) -> None:
    """Add one cell to the results file (one line, flushed: a kill loses at most the cell being measured)."""
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps(cell.to_json()) + "\n")
        file.flush()
        os.fsync(file.fileno())


class Progress:
    """One line per finished cell on stderr: what it scored, and how long the rest should take."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.started = total, 0, time.time()

    def __call__(self, cell: Cell) -> None:
        self.done += 1
        elapsed = time.time() - self.started
        left = elapsed / self.done * (self.total - self.done)
        eq = f" (eq {cell.equivalent:.0%})" if cell.stage == "prefill" else ""
        print(
            f"[{self.done}/{self.total}] {cell.model} {cell.medium} {cell.label}{' (check)' if cell.check else ''}: "
            f"{cell.accuracy:.1%}{eq} in {cell.seconds:.1f} s; {elapsed:.0f} s elapsed, about {left:.0f} s left",
            file=sys.stderr,
            flush=True,
        )


def worker_threads(workers: int, cores: int | None = None) -> int:
    """Torch threads for each of ``workers`` processes: the cores shared out (two processes that each spin
    threads on every core slow each other several times over)."""
    return max(1, (cores or os.cpu_count() or 1) // max(1, workers))


def _torch_state() -> tuple:
    return (
        torch.is_grad_enabled(),
        torch.get_num_threads(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )


def _restore_torch_state(state: tuple) -> None:
    grad, threads, matmul_tf32, cudnn_tf32 = state
    torch.set_grad_enabled(grad)
    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul_tf32, cudnn_tf32


def run(
    jobs: Sequence[J],
    measure: Callable[[J], Cell],
    path: Path,
    workers: int = 1,
    report: Callable[[Cell], None] = lambda cell: None,
    initializer: Callable[[int], None] | None = None,
) -> list[tuple[J, str]]:
    """Measure every job (``measure`` must be picklable when ``workers > 1``), appending each cell to ``path``
    as it finishes; a job that fails is reported and skipped. Returns the failed jobs with their errors."""
    threads = worker_threads(workers)
    if workers <= 1:  # in this process: the worker set-up must not outlive the run
        state = _torch_state()
        try:
            if initializer is not None:
                initializer(threads)
            return _serially(jobs, measure, path, report)
        finally:
            _restore_torch_state(state)
    # spawn: a forked child cannot use CUDA, and the parent must not load models it does not use
    context = multiprocessing.get_context("spawn")
    init = (initializer, (threads,)) if initializer is not None else (None, ())
    with ProcessPoolExecutor(workers, mp_context=context, initializer=init[0], initargs=init[1]) as pool:
        futures = {pool.submit(measure, job): job for job in jobs}
        try:
            return _collect(futures, path, report)
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _serially(
    jobs: Sequence[J], measure: Callable[[J], Cell], path: Path, report: Callable[[Cell], None]
) -> list[tuple[J, str]]:
    failed = []
    for job in jobs:
        try:
            cell = measure(job)
        except Exception:  # one broken method must not cost the rest of the sweep
            failed.append((job, _failure(job)))
            continue
        append(path, cell)
        report(cell)
    return failed


def _collect(futures: Mapping[Future, J], path: Path, report: Callable[[Cell], None]) -> list[tuple[J, str]]:
    failed = []
    for future in as_completed(futures):
        job = futures[future]
        try:
            cell = future.result()
        except Exception:
            failed.append((job, _failure(job)))
            continue
        append(path, cell)
        report(cell)
    return failed


def _failure(job: _Job) -> str:
    error = traceback.format_exc()
    print(f"FAILED {job.key}:\n{error}", file=sys.stderr, flush=True)
    return error.strip().splitlines()[-1]
