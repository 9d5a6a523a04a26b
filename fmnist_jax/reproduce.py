"""Retrains every seed experiment over several seeds and writes docs/RESULTS.md.

    make reproduce                       # all rows, 3 seeds, in the background-friendly way
    python -m fmnist_jax.reproduce [--seeds=0,1,2] [--only=cnn4,mlp_256] [--table_only]

Each (row, seed) trains with `launch.py` in its own process into
`runs/reproduce/<row>/seed<k>/` and its log goes to `train.log` there. A run
whose `results.json` exists is finished and is never retrained; an interrupted
run resumes from its newest checkpoint. So the command can be stopped at any
time (Ctrl-C, SIGTERM, a lost session) and simply started again; the table is
rewritten after every finished run, from the runs' own results.json files.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

from fmnist_jax.results import SEED_REPORTED


@dataclass(frozen=True)
class Row:
    """One table row: a config file, optional overrides, the seed's reported accuracy."""

    name: str
    config: str
    seed_reported: str
    threshold: float | None = None  # Our mean must reach this (the seed's number).
    overrides: tuple[str, ...] = field(default=())
    note: str = ""


ROWS = (
    Row(
        "mlp_4x2_raw",
        "mlp_4x2",
        "0.34",
        None,
        ("--config.normalize=False", "--config.num_epochs=10", "--config.schedule=constant"),
        "seed 001's deliberately broken baseline as it was run: raw 0-255 pixels, no normalization, "
        "10 epochs of constant Adam 1e-3",
    ),
    Row("mlp_4x2", "mlp_4x2", "0.80", 0.80, (), "the same model on pixels / 255 (30 epochs, cosine)"),
    Row("mlp_20x3", "mlp_20x3", SEED_REPORTED["mlp_20x3"], 0.87),
    Row("mlp_20x4", "mlp_20x4", SEED_REPORTED["mlp_20x4"], 0.87),
    Row("mlp_256", "mlp_256", SEED_REPORTED["mlp_256"], 0.8777),
    Row("mlp_128", "mlp_128", SEED_REPORTED["mlp_128"]),
    Row("cnn2_2x2", "cnn2_2x2", SEED_REPORTED["cnn2_2x2"], 0.9122),
    Row("cnn2_64", "cnn2_64", SEED_REPORTED["cnn2_64"]),
    Row("cnn2_dropout", "cnn2_dropout", SEED_REPORTED["cnn2_dropout"]),
    Row("cnn3_wide", "cnn3_wide", SEED_REPORTED["cnn3_wide"], 0.8844),
    Row("cnn3", "cnn3", SEED_REPORTED["cnn3"], 0.9012),
    Row("cnn4", "cnn4", SEED_REPORTED["cnn4"], 0.9156),
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_dir(root: str, row: Row, seed: int) -> str:
    return os.path.join(root, row.name, f"seed{seed}")


def load_result(workdir: str) -> dict | None:
    path = os.path.join(workdir, "results.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def train_one(row: Row, seed: int, workdir: str) -> None:
    """Trains one (row, seed) with launch.py in a child process; raises on failure."""
    os.makedirs(workdir, exist_ok=True)
    command = [
        sys.executable,
        os.path.join(ROOT, "launch.py"),
        f"--config={os.path.join(ROOT, 'configs', row.config + '.py')}",
        f"--workdir={workdir}",
        f"--config.seed={seed}",
        "--config.write_report=False",
        *row.overrides,
    ]
    log_path = os.path.join(workdir, "train.log")
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            code = child.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached the child too: it saves at the end of its current dispatch.
            print("waiting for the training run to save a checkpoint (Ctrl-C again: stop now) ...")
            child.wait()
            raise
    if code != 0:
        raise RuntimeError(f"{row.name} seed {seed} failed (exit {code}); see {log_path}")


def was_resumed(directory: str) -> bool:
    """Whether the run in `directory` was interrupted and resumed (its train.log says so)."""
    try:
        with open(os.path.join(directory, "train.log"), errors="replace") as f:
            return any(line.startswith("resumed from the checkpoint") for line in f)
    except OSError:
        return False


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def results_table(root: str, seeds: list[int], rows: tuple[Row, ...] = ROWS) -> str:
    """docs/RESULTS.md: one row per Row, from the results.json files under `root`."""
    lines = [
        "# Results: every seed experiment, retrained",
        "",
        f"Written by `make reproduce` (`python -m fmnist_jax.reproduce`) from the `results.json` "
        f"of each run under `{os.path.relpath(root, ROOT)}/`; rerun it to regenerate this page. "
        f"Test accuracy is the mean ± sample standard deviation over seeds {', '.join(map(str, seeds))} "
        "(the seed sets initialization, dropout and data order; the train/validation split is "
        "the same for all). Epochs and batch size are at most the seed write-up's, where it gives them. Times are per "
        "run: training (compilation excluded) and wall (launch to results, evaluation included).",
        "",
        "| row | params | seed's test acc | our test acc (mean ± std) | seeds | min / max | beats seed | "
        "epochs | batch | schedule, lr | train s/run | wall s/run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    done_rows = []
    notes: list[str] = []
    for row in rows:
        done = {s: r for s in seeds if (r := load_result(run_dir(root, row, s))) is not None}
        if not done:
            lines.append(f"| `{row.name}` | | {row.seed_reported} | not run yet | 0/{len(seeds)} |||||||")
            continue
        line, row_notes = _table_row(root, row, seeds, done)
        lines.append(line)
        notes += row_notes
        done_rows.append((row, done))
    results = [r for _, done in done_rows for r in done.values()]
    machines = {r["machine"] for r in results}
    finished = sorted(d for r in results if (d := r.get("finished", "")))
    total_wall = sum(r["wall_seconds"] for r in results)
    any_resumed = any(was_resumed(run_dir(root, row, s)) for row, done in done_rows for s in done)
    lines += ["", *notes]
    lines += [
        "",
        f"Machine: {'; '.join(sorted(machines)) or 'none yet'}. "
        f"Total wall time of the runs shown: {'at least ' if any_resumed else ''}{total_wall / 60:.0f} min.",
    ]
    if finished:
        lines.append(f"Runs finished between {finished[0]} and {finished[-1]}.")
    lines += [
        "",
        "Each run's full record (per-epoch metrics, validation and test confusion matrices, "
        "config) is in its `results.json` and `metrics.jsonl`.",
        "",
    ]
    return "\n".join(lines)


def _table_row(root: str, row: Row, seeds: list[int], done: dict[int, dict]) -> tuple[str, list[str]]:
    """One row's table line (mean ± std over its finished seeds) and its notes."""
    results = list(done.values())
    accs = [r["test"]["accuracy"] for r in results]
    mean, std = _mean_std(accs)
    with open(os.path.join(run_dir(root, row, next(iter(done))), "config.json")) as f:
        cfg = json.load(f)
    beats = "n/a" if row.threshold is None else ("yes" if mean > row.threshold else "**no**")
    train_s = statistics.fmean(r["train_seconds"] for r in results)
    wall_s = statistics.fmean(r["wall_seconds"] for r in results)
    resumed = [s for s in done if was_resumed(run_dir(root, row, s))]
    line = (
        f"| `{row.name}` | {results[0]['num_params']:,} | {row.seed_reported} | "
        f"{mean:.4f} ± {std:.4f} | {len(results)}/{len(seeds)} | {min(accs):.4f} / {max(accs):.4f} | "
        f"{beats} | {results[0]['num_epochs']} | {results[0]['batch_size']} | "
        f"{cfg['schedule']}, {cfg['learning_rate']:g} | {train_s:.0f} | {wall_s:.0f}{'*' if resumed else ''} |"
    )
    notes = [f"- `{row.name}`: {row.note}."] if row.note else []
    if resumed:
        notes.append(
            f"- `{row.name}`*: seed {', '.join(map(str, resumed))} was interrupted and resumed from its "
            "checkpoint; its training time adds up all processes, its wall time counts only the last."
        )
    return line, notes


def write_table(root: str, seeds: list[int], output: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = output + ".tmp"
    with open(tmp, "w") as f:
        f.write(results_table(root, seeds))
    os.replace(tmp, output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--only", default="", help="comma-separated row names (default: all rows)")
    parser.add_argument("--root", default=os.path.join(ROOT, "runs", "reproduce"), help="run directories")
    parser.add_argument("--output", default=os.path.join(ROOT, "docs", "RESULTS.md"))
    parser.add_argument("--table_only", action="store_true", help="rewrite the table, train nothing")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds={args.seeds!r}: expected comma-separated integers")
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - {r.name for r in ROWS})
    if unknown:
        parser.error(f"--only: unknown rows {unknown}; rows are {[r.name for r in ROWS]}")
    rows = [r for r in ROWS if not names or r.name in names]
    # Seed-major: a partial table soon has every row.
    todo = [(r, s) for s in seeds for r in rows if load_result(run_dir(args.root, r, s)) is None]
    print(
        f"{len(rows) * len(seeds) - len(todo)} of {len(rows) * len(seeds)} runs already finished; "
        f"{0 if args.table_only else len(todo)} to train",
        flush=True,
    )
    if not args.table_only:
        start = time.perf_counter()
        for i, (row, seed) in enumerate(todo, 1):
            workdir = run_dir(args.root, row, seed)
            t0 = time.perf_counter()
            print(f"[{i}/{len(todo)}] {row.name} seed {seed} -> {workdir}", flush=True)
            try:
                train_one(row, seed, workdir)
            except KeyboardInterrupt:
                print("interrupted; run the same command again to resume", file=sys.stderr)
                return 130
            except RuntimeError as e:
                print(f"error: {e}", file=sys.stderr)
                write_table(args.root, seeds, args.output)
                return 1
            result = load_result(workdir)
            if result is None:  # The child was stopped by a signal after saving a checkpoint.
                print("stopped before the end; run the same command again to resume", file=sys.stderr)
                write_table(args.root, seeds, args.output)
                return 1
            print(
                f"    test accuracy {result['test']['accuracy']:.4f}, {time.perf_counter() - t0:.0f} s "
                f"({(time.perf_counter() - start) / 60:.1f} min so far)",
                flush=True,
            )
            write_table(args.root, seeds, args.output)
    write_table(args.root, seeds, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
