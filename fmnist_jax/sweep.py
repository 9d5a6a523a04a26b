"""Trains a sweep, rows of config overrides over several seeds, and writes its markdown table.

    make sweep SWEEP=configs/sweeps/NAME.py
    python -m fmnist_jax.sweep --sweep=configs/sweeps/NAME.py [--seeds=0,1,2] [--only=row1,row2]
                               [--table_only] [--dry_run]

A sweep file defines `get_sweep()` returning a `Sweep`: a base config file, rows (each a
name, `--config.FIELD=VALUE` overrides or a {FIELD: VALUE} dict, and a note of what the
row changes), seeds, where the runs go (default `runs/sweeps/<name>/`) and the markdown
file and section the table goes to. The first row is the baseline the others are compared
with. A row with `evaluates=ROW` trains nothing: its only override is `tta`, and each of its
seeds is ROW's final checkpoint of that seed evaluated with it (`launch.py --mode=ensemble`
of that one run, with `--tta`), into `<root>/<row>/seed<k>/eval.json` and a results.json
that carries ROW's training time and machine; it is evaluated again when ROW's run changes.

Each (row, seed) trains with `launch.py` in its own process into `<root>/<row>/seed<k>/`,
its log in `train.log` there. A run whose `results.json` exists, or that the sweep's record
holds, is finished and is never retrained; an interrupted run resumes from its newest
checkpoint, so the command can be stopped at any time (Ctrl-C, or SIGTERM, which it passes
on to the run in progress and waits for it to save) and started again. After every
finished run its numbers go into the record (`<markdown's folder>/sweeps/<name>.json`, meant
to be committed with the markdown, so that a clone elsewhere trains only what is missing)
and the table is rewritten from the runs' own results.json files and the record, between
the lines `<!-- sweep:<name> begin -->` and `<!-- sweep:<name> end -->` of the markdown
file (added under the section's heading the first time); the rest of the file is left as
it is. `make reproduce`
(`fmnist_jax/reproduce.py`) runs its seed experiments with the same machinery.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fmnist_jax import pages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class SweepError(Exception):
    """What the command line or the sweep file asks for does not exist or is malformed;
    the message is one line."""


class Stopped(Exception):
    """SIGTERM stopped the sweep once its child process had stopped (a training run saves
    a checkpoint first)."""


@dataclass(frozen=True)
class Row:
    """One row of a sweep: its config overrides and a note of what they change."""

    name: str
    overrides: Sequence[str] | Mapping[str, Any] = ()  # ("--config.X=Y", ...) or {"X": Y}
    note: str = ""
    config: str = ""  # A config file for this row instead of the sweep's.
    evaluates: str = ""  # Another row whose trained runs this row evaluates (overrides: tta only).

    @property
    def flags(self) -> tuple[str, ...]:
        """The overrides as launch.py flags."""
        if isinstance(self.overrides, Mapping):
            return tuple(f"--config.{k}={v}" for k, v in self.overrides.items())
        return tuple(self.overrides)

    @property
    def fields(self) -> dict[str, str]:
        """The overrides as {FIELD: VALUE} strings."""
        pairs = (f.removeprefix("--config.").split("=", 1) for f in self.flags)
        return {field: value for field, value in pairs}


# The only fields a row that evaluates another row's runs may set.
EVAL_FIELDS = ("tta",)


@dataclass(frozen=True)
class Sweep:
    """A sweep: rows of overrides of one config, trained over seeds, and where its table goes.

    Relative paths are relative to the repository root."""

    name: str
    config: str
    rows: tuple[Row, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    root: str = ""  # Run directories; default runs/sweeps/<name>.
    output: str = os.path.join("docs", "RESULTS.md")
    section: str = "Beyond the seeds"
    record: str = ""  # The record of finished runs; default <output's folder>/sweeps/<name>.json.

    def run_root(self) -> str:
        return os.path.join(ROOT, self.root or os.path.join("runs", "sweeps", self.name))

    def record_file(self) -> str:
        return os.path.join(ROOT, self.record or default_record(self.output, self.name))

    def config_file(self, row: Row) -> str:
        return os.path.join(ROOT, row.config or self.config)


def default_record(output: str, name: str) -> str:
    """Where the record of `name`'s finished runs goes: next to its markdown `output`."""
    return os.path.join(os.path.dirname(output), "sweeps", f"{name}.json")


class Named(Protocol):
    @property
    def name(self) -> str: ...


# --- Runs: where they live, how they are trained, what they left. ---


def run_dir(root: str, row: Named, seed: int) -> str:
    return os.path.join(root, row.name, f"seed{seed}")


def load_result(workdir: str) -> dict | None:
    """The run's results.json, or None while the run is not finished."""
    path = os.path.join(workdir, "results.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def was_resumed(directory: str) -> bool:
    """Whether the run in `directory` was interrupted and resumed (its train.log says so)."""
    try:
        with open(os.path.join(directory, "train.log"), errors="replace") as f:
            return any(line.startswith("resumed from the checkpoint") for line in f)
    except OSError:
        return False


def launch_command(config: str, flags: Sequence[str], seed: int, workdir: str) -> list[str]:
    """launch.py training `config` with `flags` and `seed` into `workdir` (no report figures
    unless the flags ask for them)."""
    return [
        sys.executable,
        os.path.join(ROOT, "launch.py"),
        f"--config={config}",
        f"--workdir={workdir}",
        f"--config.seed={seed}",
        "--config.write_report=False",
        *flags,
    ]


def eval_command(base_workdir: str, fields: Mapping[str, str], workdir: str) -> list[str]:
    """launch.py evaluating the final checkpoint of the run in `base_workdir` with the
    evaluation `fields` (EVAL_FIELDS) into `workdir`/eval.json."""
    return [
        sys.executable,
        os.path.join(ROOT, "launch.py"),
        "--mode=ensemble",
        f"--workdir={base_workdir}",
        "--checkpoint=latest",
        *(f"--{k}={v}" for k, v in fields.items()),
        f"--output={os.path.join(workdir, 'eval.json')}",
    ]


def evaluation_result(base: dict, report: dict, base_workdir: str) -> dict:
    """The results.json of a row that evaluates another row's run: the evaluation's
    numbers, the trained run's training time and machine."""
    return {
        "test": report["test"],
        "validation": report["validation"],
        "step": report["members"][0]["step"],
        "tta": report["members"][0]["tta"],
        "evaluated": base_workdir,
        "evaluated_run": evaluated_run(base),
        "train_seconds": base["train_seconds"],
        "machine": base.get("machine", "unknown"),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def evaluated_run(base: dict) -> dict:
    """What identifies a finished run: when it finished and how long it trained."""
    return {"finished": base.get("finished"), "train_seconds": base.get("train_seconds")}


def drop_stale_evaluations(sweep: Sweep, seeds: Sequence[int]) -> None:
    """Removes the results.json of each evaluating row's seed whose evaluated run is no
    longer the run it evaluated (retrained, or gone), and its record entry, so that it is
    evaluated again."""
    results = finished_results(sweep, seeds)
    for row in (r for r in sweep.rows if r.evaluates):
        for seed in seeds:
            result, base = results.get((row.name, seed)), results.get((row.evaluates, seed))
            if result is not None and (base is None or evaluated_run(base) != result.get("evaluated_run")):
                forget(sweep, row, seed)
                print(
                    f"{row.name} seed {seed}: {row.evaluates}'s run changed since it was evaluated; evaluating again"
                )


def evaluate_run(base_workdir: str, fields: Mapping[str, str], workdir: str, label: str) -> None:
    """Evaluates the finished run in `base_workdir` with `fields` (eval_command) and writes
    `workdir`/results.json; RuntimeError (one line) if that run has not finished."""
    base = load_result(base_workdir)
    if base is None:
        raise RuntimeError(f"{label} evaluates {base_workdir}, which has not finished: train it first")
    launch(eval_command(base_workdir, fields, workdir), workdir, label)
    with open(os.path.join(workdir, "eval.json")) as f:
        report = json.load(f)
    pages.write_json(os.path.join(workdir, "results.json"), evaluation_result(base, report, base_workdir))


def launch(command: list[str], workdir: str, label: str) -> None:
    """Runs one training `command` in a child process, its output appended to
    `workdir`/train.log; raises RuntimeError if it fails. A rerun of the same command
    resumes from the workdir's newest checkpoint."""
    os.makedirs(workdir, exist_ok=True)
    log_path = os.path.join(workdir, "train.log")
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        with sigterm_passed_on(child) as received:
            try:
                code = child.wait()
            except KeyboardInterrupt:
                # Ctrl-C reached the child too: it saves at the end of its current dispatch.
                print("waiting for the training run to save a checkpoint (Ctrl-C again: stop now) ...")
                child.wait()
                raise
    if received:
        raise Stopped(f"SIGTERM: {label} stopped (a training run saves a checkpoint first)")
    if code != 0:
        raise RuntimeError(f"{label} failed (exit {code}); see {log_path}")


@contextlib.contextmanager
def sigterm_passed_on(child: subprocess.Popen) -> Iterator[list[int]]:
    """While the block runs, SIGTERM to this process is sent on to `child` and noted in the
    list it yields, so that a sweep told to stop never leaves its child training alone
    (Ctrl-C needs no help: the terminal sends it to the whole process group)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # Signals reach only the main thread.
        yield received
        return

    def pass_on(signum: int, frame: object) -> None:
        received.append(signum)
        child.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, pass_on)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


Train = Callable[[Any, int, str], None]


def run(
    rows: Sequence[Named],
    seeds: Sequence[int],
    root: str,
    train: Train,
    write: Callable[[], None],
    table_only: bool = False,
    dry_run: Callable[[Any, int, str], list[str]] | None = None,
    finished: Callable[[Any, int], bool] | None = None,
) -> int:
    """Trains every (row, seed) under `root` that has not finished (default: has no
    results.json yet), seed-major (a partial table soon has every row), calling `write()`
    after each finished run and at the end. With `dry_run`, prints the command it gives
    each such run instead. Returns the exit status: 0, 1 (a run failed or stopped early),
    130 (Ctrl-C) or 143 (SIGTERM)."""
    if finished is None:
        finished = lambda row, seed: load_result(run_dir(root, row, seed)) is not None  # noqa: E731
    todo = [(r, s) for s in seeds for r in rows if not finished(r, s)]
    total = len(rows) * len(seeds)
    print(
        f"{total - len(todo)} of {total} runs already finished; "
        f"{0 if table_only else len(todo)} to train{' (dry run)' if dry_run else ''}",
        flush=True,
    )
    if dry_run is not None:
        for row, seed in [] if table_only else todo:
            print(shlex.join(dry_run(row, seed, run_dir(root, row, seed))))
        return 0
    code = 0 if table_only else _train_all(todo, root, train, write)
    if code == 0:
        write()
    return code


def _train_all(todo: list[tuple[Any, int]], root: str, train: Train, write: Callable[[], None]) -> int:
    start = time.perf_counter()
    for i, (row, seed) in enumerate(todo, 1):
        workdir = run_dir(root, row, seed)
        t0 = time.perf_counter()
        print(f"[{i}/{len(todo)}] {row.name} seed {seed} -> {workdir}", flush=True)
        try:
            train(row, seed, workdir)
        except KeyboardInterrupt:
            print("interrupted; run the same command again to resume", file=sys.stderr)
            return 130
        except Stopped as e:
            print(f"{e}; run the same command again to resume", file=sys.stderr)
            return 128 + signal.SIGTERM
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            write()
            return 1
        result = load_result(workdir)
        if result is None:  # The child was stopped by a signal after saving a checkpoint.
            print("stopped before the end; run the same command again to resume", file=sys.stderr)
            write()
            return 1
        print(
            f"    test accuracy {result['test']['accuracy']:.4f}, {time.perf_counter() - t0:.0f} s "
            f"({(time.perf_counter() - start) / 60:.1f} min so far)",
            flush=True,
        )
        write()
    return 0


# --- The record: what the table needs of every finished run, kept in the repository. ---
#
# Run directories hold checkpoints and are not committed; a run that finished on a machine
# that is gone would leave the table with nothing to show. The record (a JSON file next to
# the markdown, committed with it) keeps each finished run's numbers, so that a fresh clone
# rewrites the same table and trains only what is missing. A run's own results.json, where
# it is here, comes first.

RECORD_FIELDS = (
    *("step", "tta", "num_params", "num_epochs", "batch_size"),
    *("train_seconds", "wall_seconds", "machine", "finished", "evaluated_run"),
)
CONFIG_FIELDS = ("schedule", "learning_rate")  # Read from the run's config.json.


class Recorded(Protocol):
    """What keeps a record of its finished runs: a sweep, or `make reproduce`'s rows."""

    @property
    def name(self) -> str: ...
    @property
    def rows(self) -> Sequence[Named]: ...
    def run_root(self) -> str: ...
    def record_file(self) -> str: ...


def record_entry(result: dict, workdir: str) -> dict:
    """What the record keeps of the run in `workdir` (its results.json is `result`): its
    final test (and validation) accuracy, what the tables and the evaluating rows read, the
    schedule and learning rate of its config.json and whether it was resumed."""
    entry = {
        split: {"accuracy": result[split]["accuracy"]} for split in ("test", "validation") if split in result
    }
    config = json.loads(pages.read(os.path.join(workdir, "config.json")) or "{}")
    return {
        **entry,
        **{k: result[k] for k in RECORD_FIELDS if k in result},
        **{k: config[k] for k in CONFIG_FIELDS if k in config},
        "resumed": was_resumed(workdir),
    }


def record_key(row: str, seed: int) -> str:
    return f"{row}/seed{seed}"


def read_record(path: str) -> dict[str, dict]:
    """{'ROW/seedK': entry} from the record file; {} where there is none. SweepError (one
    line) if it is not a record."""
    text = pages.read(path)
    if not text:
        return {}
    try:
        runs = json.loads(text)["runs"]
    except (ValueError, KeyError, TypeError) as e:
        raise SweepError(f"{shown_path(path)}: not a sweep record ({e})") from None
    if not isinstance(runs, dict):
        raise SweepError(f"{shown_path(path)}: not a sweep record (its runs are no mapping)")
    return runs


def finished_results(sweep: Recorded, seeds: Sequence[int]) -> dict[tuple[str, int], dict]:
    """Every finished (row name, seed) of the sweep's rows and `seeds`, as a record entry:
    of the run's results.json where it is here, else the record's."""
    record = read_record(sweep.record_file())
    found = {}
    for row in sweep.rows:
        for seed in seeds:
            workdir = run_dir(sweep.run_root(), row, seed)
            result = load_result(workdir)
            entry = record_entry(result, workdir) if result else record.get(record_key(row.name, seed))
            if entry is not None:
                found[row.name, seed] = entry
    return found


def update_record(sweep: Recorded) -> None:
    """Adds (or replaces) the record's entry of every run under the sweep's root that has
    a results.json; writes the record if that changes it or if there is none yet."""
    path = sweep.record_file()
    record = read_record(path)
    updated = dict(record)
    for row in sweep.rows:
        directory = os.path.join(sweep.run_root(), row.name)
        seeds = os.listdir(directory) if os.path.isdir(directory) else []
        for name in (n for n in seeds if re.fullmatch(r"seed\d+", n)):
            workdir = os.path.join(directory, name)
            if (result := load_result(workdir)) is not None:
                updated[record_key(row.name, int(name[4:]))] = record_entry(result, workdir)
    if updated != record or not os.path.isfile(path):
        _write_record(sweep, updated)


def forget(sweep: Recorded, row: Named, seed: int) -> None:
    """Removes (row, seed)'s results.json and its record entry, so that it runs again."""
    result = os.path.join(run_dir(sweep.run_root(), row, seed), "results.json")
    if os.path.isfile(result):
        os.remove(result)
    path = sweep.record_file()
    record = read_record(path)
    if record.pop(record_key(row.name, seed), None) is not None:
        _write_record(sweep, record)


def _write_record(sweep: Recorded, runs: dict[str, dict]) -> None:
    pages.write_json(sweep.record_file(), {"sweep": sweep.name, "runs": dict(sorted(runs.items()))})


# --- Command-line choices shared with reproduce. ---


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; SweepError unless distinct non-negative integers."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise SweepError(f"--seeds={text!r}: expected distinct non-negative integers separated by commas")
    return seeds


def select_rows(rows: Sequence[Named], only: str) -> list:
    """The rows named in the comma-separated `only` (all if empty), in table order."""
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = sorted(set(names) - {r.name for r in rows})
    if unknown:
        raise SweepError(f"--only: unknown rows {unknown}; rows are {[r.name for r in rows]}")
    return [r for r in rows if not names or r.name in names]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# --- The markdown file: a block between markers, the rest untouched. ---


def markers(name: str) -> tuple[str, str]:
    return f"<!-- sweep:{name} begin -->", f"<!-- sweep:{name} end -->"


def write_block(path: str, name: str, content: str, section: str | None) -> None:
    """Puts `content` between the markers of `name` in the markdown file `path` (written
    atomically). Without the markers, the block goes under the heading `section` (added at
    the end if missing) or, for `section=None`, replaces the file's head: everything before
    its first '## ' heading (all of a file that has none)."""
    begin, end = markers(name)
    block = f"{begin}\n{content.strip()}\n{end}"
    text = pages.read(path)
    parts = pages.split(text, begin, end)
    if parts:
        text = parts[0] + block + parts[2]
    elif section is None:
        head = re.search(r"^## ", text, re.MULTILINE)
        text = block + "\n" + ("\n" + text[head.start() :] if head else "")
    else:
        text = _under_heading(text, section, block)
    pages.write(path, text)


def _under_heading(text: str, section: str, block: str) -> str:
    heading = re.search(rf"^#+ +{re.escape(section)} *$", text, re.MULTILINE)
    if heading is None:
        return (text.rstrip("\n") + "\n\n" if text.strip() else "") + f"## {section}\n\n{block}\n"
    rest = text[heading.end() :].lstrip("\n")
    return f"{text[: heading.end()]}\n\n{block}\n" + (f"\n{rest}" if rest else "")


# --- A sweep file and its table. ---


def load_sweep(path: str) -> Sweep:
    """The Sweep that the file's get_sweep() returns; SweepError (one line) if there is none."""
    if not os.path.isfile(path):
        raise SweepError(f"--sweep={path}: no such file")
    spec = importlib.util.spec_from_file_location("_sweep_file", path)
    if spec is None or spec.loader is None:
        raise SweepError(f"--sweep={path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    get_sweep = getattr(module, "get_sweep", None)
    if not callable(get_sweep):
        raise SweepError(f"--sweep={path}: defines no get_sweep()")
    sweep = get_sweep()
    if not isinstance(sweep, Sweep):
        raise SweepError(f"--sweep={path}: get_sweep() returned a {type(sweep).__name__}, not a Sweep")
    check_sweep(sweep, path)
    return sweep


def check_sweep(sweep: Sweep, path: str) -> None:
    """SweepError for names unfit for directories and markers, repeated rows or seeds,
    overrides that are no --config flags, and config files that do not exist."""
    names = [sweep.name, *(r.name for r in sweep.rows)]
    bad = [n for n in names if not _NAME.fullmatch(n)]
    if bad:
        raise SweepError(f"{path}: names may hold only letters, digits, '_', '.', '-': {bad}")
    if not sweep.rows or len(set(names[1:])) != len(sweep.rows):
        raise SweepError(f"{path}: a sweep needs rows with distinct names, has {names[1:]}")
    if not sweep.seeds or min(sweep.seeds) < 0 or len(set(sweep.seeds)) != len(sweep.seeds):
        raise SweepError(f"{path}: seeds={sweep.seeds}: expected distinct non-negative integers")
    for row in sweep.rows:
        flags = [f for f in row.flags if not (f.startswith("--config.") and "=" in f)]
        if flags:
            raise SweepError(f"{path}: row {row.name}: overrides are --config.FIELD=VALUE, not {flags}")
        if not os.path.isfile(sweep.config_file(row)):
            raise SweepError(f"{path}: row {row.name}: no config file {sweep.config_file(row)}")
        if row.evaluates:
            _check_evaluating_row(sweep, row, path)


def _check_evaluating_row(sweep: Sweep, row: Row, path: str) -> None:
    """SweepError unless `row` evaluates an earlier training row and sets only EVAL_FIELDS."""
    earlier = sweep.rows[: sweep.rows.index(row)]
    if row.evaluates not in [r.name for r in earlier if not r.evaluates]:
        raise SweepError(
            f"{path}: row {row.name}: evaluates={row.evaluates!r} is not an earlier row that trains"
        )
    others = sorted(set(row.fields) - set(EVAL_FIELDS)) + (["config"] if row.config else [])
    if others or not row.fields:
        raise SweepError(
            f"{path}: row {row.name} evaluates {row.evaluates}'s runs: it sets only {EVAL_FIELDS}, not {others}"
        )


def shown_path(path: str) -> str:
    """`path` relative to the repository root when inside it, else absolute."""
    relative = os.path.relpath(os.path.abspath(path), ROOT)
    return os.path.abspath(path) if relative.startswith("..") else relative


def sweep_table(sweep: Sweep, seeds: Sequence[int], source: str) -> str:
    """The sweep's markdown: a heading, what the numbers are, and one line per row from its
    finished runs (finished_results)."""
    root = sweep.run_root()
    found = finished_results(sweep, seeds)
    done = [{s: found[row.name, s] for s in seeds if (row.name, s) in found} for row in sweep.rows]
    baseline = mean_std([r["test"]["accuracy"] for r in done[0].values()])[0] if done[0] else None
    config = f"`{shown_path(os.path.join(ROOT, sweep.config))}`"
    if any(r.config for r in sweep.rows):
        config += " (or the config file the row names)"
    lines = [
        f"### `{sweep.name}`",
        "",
        f"Written by `make sweep SWEEP={shown_path(source)}` from the `results.json` of each run under "
        f"`{shown_path(root)}/` and, for runs not there, from the record of finished runs "
        f"`{shown_path(sweep.record_file())}`; rerun it to continue or regenerate. Every row trains {config} with its "
        f"overrides, over seeds {', '.join(map(str, seeds))}. Test accuracy is the final epoch's, mean ± sample "
        f"standard deviation over the finished seeds; Δ is the difference of means from the first row, "
        f"`{sweep.rows[0].name}`. "
        "Training seconds exclude compilation and add up all processes of a resumed run.",
        "",
        "| row | what it changes | test acc (mean ± std) | Δ vs first row | seeds | train s/seed | machine |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, (row, results) in enumerate(zip(sweep.rows, done, strict=True)):
        lines.append(_row_line(row, results, len(seeds), baseline, first=i == 0))
    finished = sorted(d for results in done for r in results.values() if (d := r.get("finished", "")))
    total = sum(len(results) for results in done)
    between = f", between {finished[0]} and {finished[-1]}" if finished else ""
    lines += ["", f"{total} of {len(seeds) * len(sweep.rows)} runs finished{between}."]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _changes(row: Row) -> str:
    flags = ", ".join(f"`{f.removeprefix('--config.')}`" for f in row.flags)
    if row.config:
        flags = ", ".join(x for x in (f"`{row.config}`", flags) if x)
    if row.evaluates:
        flags += f"; `{row.evaluates}`'s models, not retrained"
    return _cell(" ".join(x for x in (row.note, f"({flags})" if flags and row.note else flags) if x) or "—")


def _row_line(row: Row, done: dict[int, dict], num_seeds: int, baseline: float | None, first: bool) -> str:
    """One table line; `baseline` is the first row's mean (None while it has no finished seed)."""
    if not done:
        return f"| `{row.name}` | {_changes(row)} | not run yet | | 0/{num_seeds} | | |"
    mean, std = mean_std([r["test"]["accuracy"] for r in done.values()])
    accuracy = f"{mean:.4f} ± {std:.4f}" if len(done) > 1 else f"{mean:.4f}"
    delta = "baseline" if first else "n/a" if baseline is None else f"{mean - baseline:+.4f}"
    seconds = statistics.fmean(r["train_seconds"] for r in done.values())
    count = f"{len(done)}/{num_seeds}" + (" (unfinished)" if len(done) < num_seeds else "")
    return (
        f"| `{row.name}` | {_changes(row)} | {accuracy} | {delta} | {count} | "
        f"{seconds:.{0 if seconds >= 10 else 1}f} | {_cell(_machines(done))} |"
    )


def _machines(done: dict[int, dict]) -> str:
    """The machine the row's seeds ran on, or each machine with its seeds if they differ."""
    by_machine: dict[str, list[int]] = {}
    for seed, result in sorted(done.items()):
        by_machine.setdefault(result.get("machine", "unknown"), []).append(seed)
    if len(by_machine) == 1:
        return next(iter(by_machine))
    return "different machines: " + "; ".join(
        f"{m} (seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))})" for m, s in by_machine.items()
    )


def evaluated_dir(sweep: Sweep, row: Row, seed: int) -> str:
    """The run directory of `seed` of the row that `row` evaluates."""
    return run_dir(sweep.run_root(), next(r for r in sweep.rows if r.name == row.evaluates), seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sweep", required=True, help="a sweep file, e.g. configs/sweeps/NAME.py")
    parser.add_argument("--seeds", help="comma-separated training seeds (default: the sweep's)")
    parser.add_argument("--only", default="", help="comma-separated row names to train (default: all)")
    parser.add_argument("--table_only", action="store_true", help="rewrite the table, train nothing")
    parser.add_argument("--dry_run", action="store_true", help="print the training commands, run nothing")
    args = parser.parse_args(argv)
    try:
        sweep = load_sweep(args.sweep)
        seeds = list(sweep.seeds) if args.seeds is None else parse_seeds(args.seeds)
        rows = select_rows(sweep.rows, args.only)
        read_record(sweep.record_file())
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    output = os.path.join(ROOT, sweep.output)

    def command(row: Row, seed: int, workdir: str) -> list[str]:
        if row.evaluates:
            return eval_command(evaluated_dir(sweep, row, seed), row.fields, workdir)
        return launch_command(sweep.config_file(row), row.flags, seed, workdir)

    def train(row: Row, seed: int, workdir: str) -> None:
        label = f"{row.name} seed {seed}"
        if row.evaluates:
            evaluate_run(evaluated_dir(sweep, row, seed), row.fields, workdir, label)
        else:
            launch(command(row, seed, workdir), workdir, label)

    # The table always covers the sweep's own seeds (plus any extra ones trained now), so
    # training one seed never drops the others from it.
    table_seeds = [*sweep.seeds, *(s for s in seeds if s not in sweep.seeds)]
    if not args.dry_run:
        drop_stale_evaluations(sweep, table_seeds)

    def write() -> None:
        update_record(sweep)
        write_block(output, sweep.name, sweep_table(sweep, table_seeds, args.sweep), sweep.section)

    done = finished_results(sweep, seeds)
    code = run(
        rows,
        seeds,
        sweep.run_root(),
        train,
        write,
        args.table_only,
        command if args.dry_run else None,
        lambda row, seed: (row.name, seed) in done,
    )
    if code == 0 and not args.dry_run:
        print(f"wrote the table to {output}")
    return code


if __name__ == "__main__":
    # Through the package module: the sweep file's `Sweep` is fmnist_jax.sweep's, not __main__'s.
    from fmnist_jax import sweep as _sweep

    sys.exit(_sweep.main())
