"""Training speed of our JAX path against TF Keras (and PyTorch where installed),
measured in one run on one machine.

    make bench
    python -m fmnist_jax.benchmark [--configs=cnn4,mlp_256] [--repeats=3] [--time_to_accuracy]

Every measurement runs in a fresh child process, and the frameworks take turns
(jax, keras, jax, keras, ...) so that a noisy neighbour hurts all of them alike;
each figure is the median over `--repeats` such rounds. Per config it reports:

- train img/s: steady state, compilation excluded, batch and float32 as the
  config says, on the real training split placed on the device and the same
  shuffled batches training uses, scanned `steps_per_dispatch` steps at a time;
- synthetic img/s: the same scanned step on one fixed device-resident batch, no
  rows gathered from the split, and the real/synthetic ratio (what reading the
  shuffled batches costs), from alternating windows;
- step-by-step img/s: one dispatch per step (`steps_per_dispatch=1`);
- compile seconds, seconds per epoch, evaluation img/s, peak resident memory of
  the process (after data, compilation and all timing);
- the same model in TF Keras (`model.fit` on in-memory arrays, Keras defaults)
  and its img/s, our ratio to it; PyTorch likewise when `torch` imports;
- with --time_to_accuracy: seconds from process start until cnn4 first reaches
  0.9156 test accuracy (seed 000's number), ours vs Keras with the same epoch budget.

Results go to stdout as a table and to --json (default docs/benchmark.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from fmnist_jax import input_pipeline
from fmnist_jax.benchmark import jax_bench, keras_bench, markdown_block, torch_bench
from fmnist_jax.benchmark.common import ROOT, TARGET_ACCURACY, load_config, machine, run_child

# A child's measurement by --worker name: one JSON line on stdout.
WORKERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "jax": lambda a: jax_bench.jax_worker(a.config),
    "keras": lambda a: keras_bench.keras_worker(a.config),
    "torch": lambda a: torch_bench.torch_worker(a.config),
    "jax_tta": lambda a: jax_bench.jax_time_to_accuracy(a.config),
    "keras_tta": lambda a: keras_bench.keras_worker(a.config, a.epochs_to_target),
    "ablation": lambda a: jax_bench.ablation_worker(a.config, a.variant),
}
# The medians of our children's figures that the summary keeps.
JAX_SUMMARY_KEYS = (
    "train_images_per_second",
    "synthetic_images_per_second",
    "stepwise_images_per_second",
    "compile_seconds",
    "eval_images_per_second",
    "seconds_per_epoch",
    "peak_rss_mib",
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fmnist_jax.benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--configs", default="cnn4,mlp_256", help="comma-separated config names")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported")
    p.add_argument(
        "--frameworks", default="jax,keras,torch", help="keras and torch are skipped when not installed"
    )
    p.add_argument("--time_to_accuracy", action="store_true", help="also time cnn4 to 0.9156 test accuracy")
    p.add_argument("--ablation", action="store_true", help="also time cnn4 with each CPU choice undone")
    p.add_argument("--json", default=os.path.join(ROOT, "docs", "benchmark.json"))
    p.add_argument(
        "--markdown",
        default=os.path.join(ROOT, "docs", "PERFORMANCE.md"),
        help="file whose block between the benchmark markers gets the results ('' to skip)",
    )
    p.add_argument(
        "--block",
        default="benchmark",
        help="marker name: the results replace <!-- NAME:begin --> ... <!-- NAME:end -->",
    )
    p.add_argument(
        "--from_json", help="measure nothing: rewrite the markdown block from this earlier --json output"
    )
    p.add_argument(
        "--profile",
        metavar="NAME",
        help="measure nothing else: time each XLA operation of NAME's training step",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--epochs_to_target", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    return p


def installed_frameworks(frameworks: str) -> list[str]:
    """The comma-separated frameworks, less Keras and PyTorch where they do not import."""
    chosen = [f for f in frameworks.split(",") if f]
    for framework, module in (("keras", "keras"), ("torch", "torch")):
        if framework in chosen and not input_pipeline.installed(module):
            print(f"{module} is not installed: {framework} is skipped", flush=True)
            chosen.remove(framework)
    return chosen


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _other_summary(other: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Keras's or PyTorch's medians; for Keras every setup's median and the fastest."""
    summary: dict[str, Any] = {
        "train_images_per_second": _median(runs, "train_images_per_second"),
        "peak_rss_mib": _median(runs, "peak_rss_mib"),
    }
    if other == "keras":
        summary["setups"] = {
            setup: statistics.median(r["setups"][setup]["train_images_per_second"] for r in runs)
            for setup in runs[0].get("setups", {})
        }
        summary["fastest_setup"] = statistics.mode(r["fastest_setup"] for r in runs)
    return summary


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One config's medians over the rounds, and our ratio to each other framework."""
    summary: dict[str, Any] = {"runs": runs}
    if "jax" not in runs:
        return summary
    j = runs["jax"]
    summary["jax"] = {key: _median(j, key) for key in JAX_SUMMARY_KEYS}
    summary["jax"]["real_over_synthetic"] = _median(j, "real_over_synthetic")
    for other in ("keras", "torch"):
        if other in runs:
            summary[other] = _other_summary(other, runs[other])
            # Ratios per round (the two ran back to back), then the median.
            summary["jax"][f"over_{other}"] = statistics.median(
                a["train_images_per_second"] / b["train_images_per_second"]
                for a, b in zip(j, runs[other], strict=True)
            )
    return summary


def measure_config(name: str, frameworks: list[str], repeats: int) -> dict[str, Any]:
    """`repeats` rounds, each framework in turn in a fresh child, then the summary."""
    runs: dict[str, list[dict[str, Any]]] = {f: [] for f in frameworks}
    for r in range(repeats):
        for framework in frameworks:
            print(f"{name}: round {r + 1}/{repeats}, {framework} ...", flush=True)
            runs[framework].append(run_child(["--worker", framework, "--config", name]))
    return summarize(runs)


def _ablation_env(variant: str) -> dict[str, str] | None:
    """jaxlib's default flags: ours off, and YNNPACK's fusion flag dropped from XLA_FLAGS."""
    env = {"FMNIST_JAX_CPU_FLAGS": "0"} if variant == "jaxlib_default_flags" else None
    if env and "XLA_FLAGS" in os.environ:
        env["XLA_FLAGS"] = " ".join(f for f in os.environ["XLA_FLAGS"].split() if "ynn_fusion_type" not in f)
    return env


def measure_ablation(repeats: int) -> dict[str, Any]:
    """cnn4 with each of our CPU choices undone, variants in turn round by round."""
    runs_by_variant: dict[str, list[float]] = {v: [] for v in jax_bench.ABLATIONS}
    for r in range(repeats):
        for variant in jax_bench.ABLATIONS:
            print(f"cnn4 ablation: round {r + 1}/{repeats}, {variant} ...", flush=True)
            args = ["--worker", "ablation", "--config", "cnn4", "--variant", variant]
            out = run_child(args, _ablation_env(variant))
            runs_by_variant[variant].append(out["train_images_per_second"])
    ours = runs_by_variant["ours"]
    return {
        v: {
            "what": jax_bench.ABLATIONS[v],
            "train_images_per_second": statistics.median(x),
            "ours_over_this": statistics.median(a / b for a, b in zip(ours, x, strict=True)),
            "runs": x,
        }
        for v, x in runs_by_variant.items()
    }


def measure_time_to_accuracy() -> dict[str, Any]:
    """cnn4 to the target accuracy: ours, then Keras with the same epoch budget."""
    config = load_config("cnn4")
    print("cnn4 time to accuracy: ours ...", flush=True)
    ours = run_child(["--worker", "jax_tta", "--config", "cnn4"])
    print("cnn4 time to accuracy: keras ...", flush=True)
    theirs = run_child(
        ["--worker", "keras_tta", "--config", "cnn4", "--epochs_to_target", str(config.num_epochs)]
    )
    return {"target": TARGET_ACCURACY, "jax": ours, "keras": theirs}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """The whole report: every config, then the ablation and time to accuracy if asked."""
    frameworks = installed_frameworks(args.frameworks)
    report: dict[str, Any] = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "repeats": args.repeats,
        "configs": {},
    }
    for name in [n for n in args.configs.split(",") if n]:
        report["configs"][name] = measure_config(name, frameworks, args.repeats)
    if args.ablation:
        report["ablation"] = measure_ablation(args.repeats)
    if args.time_to_accuracy:
        report["time_to_accuracy"] = measure_time_to_accuracy()
    return report


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.worker:  # A child: one measurement, one JSON line.
        print(json.dumps(WORKERS[args.worker](args)), flush=True)
        return 0
    if args.profile:
        print(jax_bench.profile_ops(args.profile), flush=True)
        return 0
    if args.from_json:
        with open(args.from_json) as f:
            report = json.load(f)
    else:
        report = measure(args)
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return markdown_block.write_markdown(args.markdown, args.block, markdown_block.markdown(report))


if __name__ == "__main__":
    sys.exit(main())
