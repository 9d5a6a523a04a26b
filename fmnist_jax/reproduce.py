"""Retrains every seed experiment over several seeds and writes docs/RESULTS.md.

    make reproduce                       # all rows, 3 seeds, in the background-friendly way
    python -m fmnist_jax.reproduce [--seeds=0,1,2] [--only=cnn4,mlp_256] [--table_only] [--dry_run]

A sweep (fmnist_jax/sweep.py) whose rows are config files. Each (row, seed) trains
with `launch.py` in its own process into `runs/reproduce/<row>/seed<k>/` and its
log goes to `train.log` there. A run whose `results.json` exists is finished and
is never retrained; an interrupted run resumes from its newest checkpoint. So the
command can be stopped at any time (Ctrl-C, SIGTERM, a lost session) and simply
started again. After every finished run its numbers go into the record of finished
runs, docs/sweeps/reproduce.json (committed with the page, so that a clone elsewhere
rewrites the same table and trains only what is missing; a run in the record counts as
finished), and the table is rewritten from the runs' own results.json files and the
record at the top of docs/RESULTS.md (between the lines `<!-- sweep:reproduce begin -->`
and `<!-- sweep:reproduce end -->`; the sections after it, such as the sweeps' "Beyond
the seeds", are kept).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import dataclass, field

from fmnist_jax import sweep
from fmnist_jax.results import SEED_REPORTED
from fmnist_jax.sweep import mean_std


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


def command(row: Row, seed: int, workdir: str) -> list[str]:
    """The launch.py command line of one (row, seed)."""
    return sweep.launch_command(
        os.path.join(ROOT, "configs", row.config + ".py"), row.overrides, seed, workdir
    )


def train_one(row: Row, seed: int, workdir: str) -> None:
    """Trains one (row, seed) with launch.py in a child process; raises on failure."""
    sweep.launch(command(row, seed, workdir), workdir, f"{row.name} seed {seed}")


@dataclass(frozen=True)
class Reproduction:
    """The rows, where their runs go and the record of the finished ones (sweep.Recorded)."""

    rows: tuple[Row, ...]
    root: str
    record: str
    name: str = "reproduce"

    def run_root(self) -> str:
        return self.root

    def record_file(self) -> str:
        return self.record


def results_table(repro: Reproduction, seeds: list[int]) -> str:
    """docs/RESULTS.md: one row per Row, from its finished runs (sweep.finished_results)."""
    found = sweep.finished_results(repro, seeds)
    lines = [
        "# Results: every seed experiment, retrained",
        "",
        f"Written by `make reproduce` (`python -m fmnist_jax.reproduce`) from the `results.json` "
        f"of each run under `{sweep.shown_path(repro.root)}/` and, for runs not there, from the record of "
        f"finished runs `{sweep.shown_path(repro.record)}`; rerun it to continue or regenerate this page. "
        f"Test accuracy is the mean ± sample standard deviation over seeds {', '.join(map(str, seeds))} "
        "(the seed sets initialization, dropout and data order; the train/validation split is "
        "the same for all). Epochs and batch size are at most the seed write-up's, where it gives them. Times are per "
        "run: training (compilation excluded) and wall (launch to results, evaluation included).",
        "",
        "| row | params | seed's test acc | our test acc (mean ± std) | seeds | min / max | beats seed | "
        "epochs | batch | schedule, lr | train s/run | wall s/run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    results: list[dict] = []
    notes: list[str] = []
    for row in repro.rows:
        done = {s: found[row.name, s] for s in seeds if (row.name, s) in found}
        if not done:
            lines.append(f"| `{row.name}` | | {row.seed_reported} | not run yet | 0/{len(seeds)} |||||||")
            continue
        line, row_notes = _table_row(row, len(seeds), done)
        lines.append(line)
        notes += row_notes
        results += done.values()
    return "\n".join([*lines, *(["", *notes] if notes else []), "", *_summary(results)])


def _summary(results: list[dict]) -> list[str]:
    """The machines, the total wall time and when the runs shown finished."""
    machines = {r.get("machine", "unknown") for r in results}
    finished = sorted(d for r in results if (d := r.get("finished", "")))
    total_wall = sum(r["wall_seconds"] for r in results)
    any_resumed = any(r.get("resumed") for r in results)
    lines = [
        f"Machine: {'; '.join(sorted(machines)) or 'none yet'}. "
        f"Total wall time of the runs shown: {'at least ' if any_resumed else ''}{total_wall / 60:.0f} min."
    ]
    if finished:
        lines.append(f"Runs finished between {finished[0]} and {finished[-1]}.")
    return [
        *lines,
        "",
        "Each run's full record (per-epoch metrics, validation and test confusion matrices, "
        "config) is in its `results.json` and `metrics.jsonl`.",
        "",
    ]


def _table_row(row: Row, num_seeds: int, done: dict[int, dict]) -> tuple[str, list[str]]:
    """One row's table line (mean ± std over its finished seeds) and its notes."""
    results = list(done.values())
    accs = [r["test"]["accuracy"] for r in results]
    mean, std = mean_std(accs)
    first = results[0]
    beats = "n/a" if row.threshold is None else ("yes" if mean > row.threshold else "**no**")
    train_s = statistics.fmean(r["train_seconds"] for r in results)
    wall_s = statistics.fmean(r["wall_seconds"] for r in results)
    resumed = [s for s, r in done.items() if r.get("resumed")]
    line = (
        f"| `{row.name}` | {first['num_params']:,} | {row.seed_reported} | "
        f"{mean:.4f} ± {std:.4f} | {len(results)}/{num_seeds} | {min(accs):.4f} / {max(accs):.4f} | "
        f"{beats} | {first['num_epochs']} | {first['batch_size']} | "
        f"{first['schedule']}, {first['learning_rate']:g} | {train_s:.0f} | {wall_s:.0f}{'*' if resumed else ''} |"
    )
    notes = [f"- `{row.name}`: {row.note}."] if row.note else []
    if resumed:
        notes.append(
            f"- `{row.name}`*: seed {', '.join(map(str, resumed))} was interrupted and resumed from its "
            "checkpoint; its training time adds up all processes, its wall time counts only the last."
        )
    return line, notes


def write_table(repro: Reproduction, seeds: list[int], output: str) -> None:
    """Records the finished runs; the table at the top of `output`, the rest of the file kept."""
    sweep.update_record(repro)
    sweep.write_block(output, "reproduce", results_table(repro, seeds), section=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--only", default="", help="comma-separated row names (default: all rows)")
    parser.add_argument("--root", default=os.path.join(ROOT, "runs", "reproduce"), help="run directories")
    parser.add_argument("--output", default=os.path.join(ROOT, "docs", "RESULTS.md"))
    parser.add_argument("--table_only", action="store_true", help="rewrite the table, train nothing")
    parser.add_argument("--dry_run", action="store_true", help="print the training commands, run nothing")
    parser.add_argument(
        "--record", help="the record of finished runs (default: <output's folder>/sweeps/reproduce.json)"
    )
    args = parser.parse_args(argv)
    repro = Reproduction(
        ROWS, args.root, args.record or sweep.default_record(os.path.abspath(args.output), "reproduce")
    )
    try:
        seeds = sweep.parse_seeds(args.seeds)
        rows = sweep.select_rows(ROWS, args.only)
        done = sweep.finished_results(repro, seeds)
    except sweep.SweepError as e:
        parser.error(str(e))
    code = sweep.run(
        rows,
        seeds,
        args.root,
        train_one,
        lambda: write_table(repro, seeds, args.output),
        args.table_only,
        command if args.dry_run else None,
        lambda row, seed: (row.name, seed) in done,
    )
    if code == 0 and not args.dry_run:
        print(f"wrote {args.output}")
    return code


if __name__ == "__main__":
    sys.exit(main())
