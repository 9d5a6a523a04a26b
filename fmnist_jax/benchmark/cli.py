"""Training speed of our JAX path against TF Keras and PyTorch (where installed),
measured in one run on one machine, and against what the machine allows.

    make bench
    python -m fmnist_jax.benchmark [--configs=cnn4,mlp_256] [--repeats=3] [--time_to_accuracy]

Every measurement runs in a fresh child process, and the frameworks take turns
(jax, keras, torch, jax, keras, torch, ...) so that a noisy neighbour hurts all of
them alike; each figure is the median over `--repeats` such rounds. First the
machine's float32 matmul peak is measured; then per config it reports:

- train img/s: steady state, compilation excluded, batch and float32 as the
  config says, on the real training split placed on the device and the same
  shuffled batches training uses, scanned `steps_per_dispatch` steps at a time;
- synthetic img/s: the same scanned step on one fixed device-resident batch, no
  rows gathered from the split, and the real/synthetic ratio (what reading the
  shuffled batches costs), from alternating windows;
- step-by-step img/s: one dispatch per step (`steps_per_dispatch=1`);
- compile seconds, seconds per epoch, evaluation img/s, peak resident memory of
  the process (after data, compilation and all timing);
- the same model in TF Keras (`model.fit` on in-memory arrays) and PyTorch (eager,
  when `torch` imports), each setup of theirs in its own child, timed step by step
  inside one long run with the warm-up left out (`--steady_seconds` of steady
  steps); the fastest setup of each counts, every setup is recorded, and our ratio
  is given to each and to the fastest of them;
- the training FLOPs per image counted from the network, and each framework's
  share of the matmul peak;
- with --time_to_accuracy: seconds from process start until cnn4 first reaches
  0.9156 test accuracy (seed 000's number), ours vs Keras with the same epoch budget.

Results go to stdout as markdown and to --json (default docs/benchmark.json); the
markdown replaces, in --markdown's --block, the block of this machine's hardware
class (e.g. 'Zen 4 / AVX-512'), leaving other classes' blocks as they are.
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
from fmnist_jax.benchmark import jax_bench, keras_bench, limits, markdown_block, torch_bench
from fmnist_jax.benchmark.common import (
    ROOT,
    STEADY_SECONDS,
    TARGET_ACCURACY,
    load_config,
    machine,
    run_child,
)

# A child's measurement by --worker name: one JSON line on stdout.
WORKERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "jax": lambda a: jax_bench.jax_worker(a.config),
    "keras": lambda a: keras_bench.keras_worker(a.config, a.variant or "fit defaults", a.steady_seconds),
    "torch": lambda a: torch_bench.torch_worker(a.config, a.variant or "default (NCHW)", a.steady_seconds),
    "jax_tta": lambda a: jax_bench.jax_time_to_accuracy(a.config),
    "keras_tta": lambda a: keras_bench.keras_time_to_accuracy(a.config, a.epochs_to_target),
    "ablation": lambda a: jax_bench.ablation_worker(a.config, a.variant),
    "matmul_peak": lambda a: limits.matmul_peak(a.matmul_size),
}
# Each peer's setups, each timed in its own child per round; the fastest counts.
PEER_SETUPS: dict[str, dict[str, dict[str, Any]]] = {
    "keras": keras_bench.KERAS_SETUPS,
    "torch": torch_bench.TORCH_SETUPS,
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
    p.add_argument(
        "--steady_seconds",
        type=float,
        default=STEADY_SECONDS,
        help="seconds of steady steps timed in each Keras and PyTorch run (after the warm-up)",
    )
    p.add_argument(
        "--matmul_size",
        type=int,
        default=limits.MATMUL_SIZE,
        help="the matmul peak's square matrices (size x size by size x size)",
    )
    p.add_argument("--json", default=os.path.join(ROOT, "docs", "benchmark.json"))
    p.add_argument(
        "--markdown",
        default=os.path.join(ROOT, "docs", "PERFORMANCE.md"),
        help="file whose block between the benchmark markers gets the results ('' to skip)",
    )
    p.add_argument(
        "--block",
        default="benchmark",
        help="marker name: the results replace, inside <!-- NAME:begin --> ... <!-- NAME:end -->, "
        "the block of this run's hardware class (<!-- NAME [CLASS]:begin --> ...), or add it",
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


def setups_to_time(frameworks: list[str]) -> dict[str, list[str]]:
    """The setups each peer among `frameworks` is timed in, per round."""
    return {f: list(PEER_SETUPS[f]) for f in frameworks if f in PEER_SETUPS}


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def fastest_of(setups: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One round of a peer from its setups' children: every setup, and the fastest's rate."""
    fastest = max(setups, key=lambda s: setups[s]["train_images_per_second"])
    first = next(iter(setups.values()))
    return {
        "framework": first.get("framework"),
        "version": first.get("version"),
        "setups": setups,
        "fastest_setup": fastest,
        "train_images_per_second": setups[fastest]["train_images_per_second"],
        "peak_rss_mib": max(r["peak_rss_mib"] for r in setups.values()),
    }


def _other_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Keras's or PyTorch's medians: the fastest setup's rate, and every setup's."""
    summary: dict[str, Any] = {
        "train_images_per_second": _median(runs, "train_images_per_second"),
        "peak_rss_mib": _median(runs, "peak_rss_mib"),
    }
    if "setups" in runs[0]:
        summary["setups"] = {
            setup: statistics.median(r["setups"][setup]["train_images_per_second"] for r in runs)
            for setup in runs[0]["setups"]
        }
        summary["fastest_setup"] = statistics.mode(r["fastest_setup"] for r in runs)
    return summary


def _over_fastest_peer(ours: list[dict[str, Any]], peers: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Our rate over the fastest peer's in each round (they ran back to back), the
    median of those, and which peer and setup was fastest most often."""
    ratios, names = [], []
    for i, mine in enumerate(ours):
        other = max(peers, key=lambda f: peers[f][i]["train_images_per_second"])
        ratios.append(mine["train_images_per_second"] / peers[other][i]["train_images_per_second"])
        names.append(f"{other}: {peers[other][i].get('fastest_setup', '-')}")
    return {"over_fastest_peer": statistics.median(ratios), "fastest_peer": statistics.mode(names)}


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One config's medians over the rounds, and our ratio to each other framework
    and to the fastest of them."""
    summary: dict[str, Any] = {"runs": runs}
    if "jax" not in runs:
        return summary
    j = runs["jax"]
    summary["jax"] = {key: _median(j, key) for key in JAX_SUMMARY_KEYS}
    summary["jax"]["real_over_synthetic"] = _median(j, "real_over_synthetic")
    peers: dict[str, list[dict[str, Any]]] = {o: runs[o] for o in ("keras", "torch") if o in runs}
    for other, theirs in peers.items():
        summary[other] = _other_summary(theirs)
        # Ratios per round (the two ran back to back), then the median.
        summary["jax"][f"over_{other}"] = statistics.median(
            a["train_images_per_second"] / b["train_images_per_second"]
            for a, b in zip(j, theirs, strict=True)
        )
    if peers:
        fastest = _over_fastest_peer(j, peers)
        summary["jax"]["over_fastest_peer"] = fastest["over_fastest_peer"]
        summary["fastest_peer"] = fastest["fastest_peer"]
    return summary


def training_flops(name: str) -> int | None:
    """The config's training FLOPs per image, None for a network without a count."""
    try:
        return limits.training_flops_per_image(load_config(name))
    except ValueError:
        return None


def measure_config(
    name: str, frameworks: list[str], repeats: int, steady_seconds: float = STEADY_SECONDS
) -> dict[str, Any]:
    """`repeats` rounds, each framework in turn (each peer setup) in a fresh child,
    then the summary."""
    runs: dict[str, list[dict[str, Any]]] = {f: [] for f in frameworks}
    peer_setups = setups_to_time(frameworks)
    for r in range(repeats):
        for framework in frameworks:
            args = ["--worker", framework, "--config", name]
            if framework not in peer_setups:
                print(f"{name}: round {r + 1}/{repeats}, {framework} ...", flush=True)
                runs[framework].append(run_child(args))
                continue
            args += ["--steady_seconds", str(steady_seconds)]
            setups = {}
            for setup in peer_setups[framework]:
                print(f"{name}: round {r + 1}/{repeats}, {framework} ({setup}) ...", flush=True)
                setups[setup] = run_child([*args, "--variant", setup])
            runs[framework].append(fastest_of(setups))
    return {**summarize(runs), "training_flops_per_image": training_flops(name)}


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
    """The whole report: the machine and its matmul peak, every config, then the
    ablation and time to accuracy if asked."""
    frameworks = installed_frameworks(args.frameworks)
    report: dict[str, Any] = {
        "machine": machine(),
        "hardware": limits.hardware(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "repeats": args.repeats,
        "steady_seconds": args.steady_seconds,
        "not_installed": [f for f in args.frameworks.split(",") if f and f not in frameworks],
        "configs": {},
    }
    print("float32 matmul peak ...", flush=True)
    report["matmul_peak"] = run_child(["--worker", "matmul_peak", "--matmul_size", str(args.matmul_size)])
    for name in [n for n in args.configs.split(",") if n]:
        report["configs"][name] = measure_config(name, frameworks, args.repeats, args.steady_seconds)
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
    hardware_class = report.get("hardware", {}).get("class")
    return markdown_block.write_markdown(
        args.markdown, args.block, markdown_block.markdown(report), hardware_class
    )


if __name__ == "__main__":
    sys.exit(main())
