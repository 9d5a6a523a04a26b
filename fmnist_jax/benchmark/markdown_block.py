"""The benchmark's results as markdown, and that text written into a docs page
(docs/PERFORMANCE.md) between a named block's markers, in the block of the run's
hardware class inside it (one per class measured: 'Zen 3 / AVX2', 'Zen 4 / AVX-512',
an accelerator's kind)."""

from __future__ import annotations

import os
from typing import Any

from fmnist_jax import pages
from fmnist_jax.benchmark import limits


def markers(block: str = "benchmark") -> tuple[str, str]:
    return f"<!-- {block}:begin -->", f"<!-- {block}:end -->"


def class_markers(block: str, hardware_class: str) -> tuple[str, str]:
    """The markers of one hardware class's block inside `block`, e.g.
    `<!-- benchmark [Zen 4 / AVX-512]:begin -->`."""
    return markers(f"{block} [{hardware_class}]")


BEGIN, END = markers()


def _with_class_block(inner: str, block: str, text: str, hardware_class: str) -> str:
    """`inner` with the class's block replaced by `text`, or `text` added in a new class
    block at its end; every other line as it was."""
    begin, end = class_markers(block, hardware_class)
    new = f"{begin}\n{text}\n{end}"
    parts = pages.split(inner, begin, end)
    if parts:
        return f"{parts[0]}{new}{parts[2]}"
    return f"{inner.rstrip()}\n\n{new}\n" if inner.strip() else f"\n{new}\n"


def update_markdown(
    path: str, text: str, block: str = "benchmark", hardware_class: str | None = None
) -> bool:
    """Writes `text` between the block's markers in `path`. With a hardware class (a
    run's `hardware.class`), only that class's block inside it is replaced, or added
    at its end: the results of other classes stay. Without one (a report from before
    classes were recorded), the whole block, unless it holds class blocks. False
    (and `path` unchanged) where the block is absent or holds class blocks."""
    if not os.path.isfile(path):
        return False
    parts = pages.split(pages.read(path), *markers(block))
    if parts is None or (hardware_class is None and f"<!-- {block} [" in parts[1]):
        return False
    head, inner, tail = parts
    inner = f"\n{text}\n" if hardware_class is None else _with_class_block(inner, block, text, hardware_class)
    begin, end = markers(block)
    pages.write(path, f"{head}{begin}{inner}{end}{tail}")
    return True


def write_markdown(path: str, block: str, text: str, hardware_class: str | None = None) -> int:
    """Prints `text` and, if `path`, writes it into the block (the hardware class's
    block inside it, when there is a class); an exit status."""
    print(text)
    if not path:
        return 0
    where = f"the {block} block" + (f"'s {hardware_class} block" if hardware_class else "")
    if update_markdown(path, text, block, hardware_class):
        print(f"updated {where} of {path}")
    else:
        begin, end = markers(block)
        print(
            f"{path} has no {begin} ... {end} block, or (for a report without a hardware class) "
            "one that holds per-class blocks: not changed"
        )
    return 0


def _fmt(d: dict[str, Any], key: str, spec: str = ",.0f", suffix: str = "") -> str:
    return format(d[key], spec) + suffix if key in d else "-"


def _speed_rows(configs: dict[str, Any]) -> list[str]:
    """The main table: one row per config, a dash where a figure is missing."""
    lines = [
        "| config | batch, dtype | ours train img/s | synthetic img/s | real/synthetic | step-by-step img/s | "
        "compile s | s/epoch | eval img/s | peak RSS MiB | Keras img/s | ours/Keras | PyTorch img/s | ours/PyTorch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in configs.items():
        j, k, t = s.get("jax", {}), s.get("keras", {}), s.get("torch", {})
        first = (s.get("runs", {}).get("jax") or [{}])[0]
        setup = f"{first['batch_size']}, {first['compute_dtype']}" if "batch_size" in first else "-"
        lines.append(
            f"| `{name}` | {setup} | {_fmt(j, 'train_images_per_second')} | {_fmt(j, 'synthetic_images_per_second')} | "
            f"{_fmt(j, 'real_over_synthetic', '.3f')} | {_fmt(j, 'stepwise_images_per_second')} | "
            f"{_fmt(j, 'compile_seconds', '.1f')} | {_fmt(j, 'seconds_per_epoch', '.1f')} | "
            f"{_fmt(j, 'eval_images_per_second')} | {_fmt(j, 'peak_rss_mib')} | "
            f"{_fmt(k, 'train_images_per_second')} | {_fmt(j, 'over_keras', '.2f', 'x')} | "
            f"{_fmt(t, 'train_images_per_second')} | {_fmt(j, 'over_torch', '.2f', 'x')} |"
        )
    return lines


PEER_NAMES = {"keras": "Keras", "torch": "PyTorch"}
INSTALL_HINTS = {
    "torch": "`.venv/bin/pip install torch==2.13.0` installs its CPU build; it is not in requirements.txt",
    "keras": "`pip install -r requirements.txt` installs TF Keras",
}


def _peer_columns(configs: dict[str, Any]) -> list[tuple[str, str]]:
    """(framework, setup) of every peer setup measured, in the order first seen."""
    columns: list[tuple[str, str]] = []
    for s in configs.values():
        for framework in PEER_NAMES:
            for setup in s.get(framework, {}).get("setups", {}):
                if (framework, setup) not in columns:
                    columns.append((framework, setup))
    return columns


def _peer_rows(configs: dict[str, Any]) -> list[str]:
    """Every Keras and PyTorch setup's img/s per config, the fastest peer, and our
    ratio to it (none without peer setups)."""
    columns = _peer_columns(configs)
    if not columns:
        return []
    lines = [
        "",
        "Keras's and PyTorch's figures above are their fastest setup in each round; every setup (img/s), "
        "and ours against the fastest peer:",
        "",
        "| config | "
        + " | ".join(f"{PEER_NAMES[f]}: {setup}" for f, setup in columns)
        + " | fastest peer | ours / fastest peer |",
        "|---|" + "---|" * (len(columns) + 2),
    ]
    for name, s in configs.items():
        cells = [_fmt(s.get(f, {}).get("setups", {}), setup) for f, setup in columns]
        framework, _, setup = s.get("fastest_peer", "-").partition(": ")  # E.g. 'torch: channels_last'.
        fastest = f"{PEER_NAMES[framework]}: {setup}" if framework in PEER_NAMES else framework
        cells += [fastest, _fmt(s.get("jax", {}), "over_fastest_peer", ".2f", "x")]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return lines


def _hardware_lines(report: dict[str, Any]) -> list[str]:
    """The CPU's model, family/model numbers, vector flags and class; what is not installed."""
    lines = []
    cpu = report.get("hardware", {}).get("cpu")
    if cpu:
        yes = {True: "yes", False: "no"}
        lines.append(
            f"CPU: {cpu['model_name']}, family {cpu['family']} model {cpu['model']}; avx512f "
            f"{yes[cpu['avx512f']]}, avx512_bf16 {yes[cpu['avx512_bf16']]}"
            + (f", amx_bf16 {yes[cpu['amx_bf16']]}" if "amx_bf16" in cpu else "")  # Not in older reports.
            + f"; class {report['hardware']['class']}."
        )
    for framework in report.get("not_installed", []):
        name = PEER_NAMES.get(framework, framework)
        lines.append(
            f"{name}: not measured, `{framework}` does not import here ({INSTALL_HINTS.get(framework)})."
        )
    return ["", *lines] if lines else []


def _bf16_peak(peak: dict[str, Any]) -> str:
    """XLA's bfloat16 dot rate (float32 sums), where the run measured it (not a limit)."""
    if "xla_bf16_gflops" not in peak:
        return ""
    return f" In bfloat16 (float32 sums) XLA's dot ran at {peak['xla_bf16_gflops']:.0f} GFLOP/s."


def _limit_rows(report: dict[str, Any]) -> list[str]:
    """The matmul peak and each framework's share of it per config (none without a peak)."""
    peak = report.get("matmul_peak")
    if not peak:
        return []
    gflops, n = peak["gflops"], peak["size"]
    lines = [
        "",
        f"Float32 matmul peak in this run ({n}x{n} by {n}x{n}, {peak['cores']} cores, best of "
        f"{peak['repeats']}): XLA's dot {peak['xla_gflops']:.0f} GFLOP/s, NumPy ({peak['numpy_blas']}) "
        f"{peak['numpy_gflops']:.0f} GFLOP/s; the limit is {gflops:.0f} GFLOP/s.{_bf16_peak(peak)} Training FLOPs per "
        "image are counted from the network (convolutions and dense layers, 3x the forward less the "
        "first layer's input gradient); a share is a training rate's FLOP/s over the limit.",
        "",
        "| config | training MFLOP per image | img/s at the limit | ours: share | Keras: share | PyTorch: share |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in report["configs"].items():
        flops = s.get("training_flops_per_image")
        if not flops:
            continue
        shares = [
            format(limits.peak_share(s[f]["train_images_per_second"], flops, gflops), ".0%")
            if f in s
            else "-"
            for f in ("jax", "keras", "torch")
        ]
        lines.append(
            f"| `{name}` | {flops / 1e6:.1f} | {gflops * 1e9 / flops:,.0f} | " + " | ".join(shares) + " |"
        )
    return lines


def _ablation_rows(ablation: dict[str, Any] | None) -> list[str]:
    if not ablation:
        return []
    lines = ["", "| cnn4, scanned training, with ... | img/s | ours / this |", "|---|---|---|"]
    for a in ablation.values():
        lines.append(f"| {a['what']} | {a['train_images_per_second']:,.0f} | {a['ours_over_this']:.2f}x |")
    return lines


def _time_to_accuracy_lines(tta: dict[str, Any] | None) -> list[str]:
    if not tta:
        return []
    lines = [""]
    if "seconds_to_first_step" in tta["jax"]:
        lines.append(
            f"- jax: launch to first training step (data loaded, epoch program compiled): "
            f"{tta['jax']['seconds_to_first_step']:.1f} s."
        )
    for who in ("jax", "keras"):
        r = tta[who]
        if "seconds_to_target" in r:
            lines.append(
                f"- {who}: cnn4 reached {tta['target']} test accuracy after epoch {r['epochs_to_target']}, "
                f"{r['seconds_to_target']:.0f} s after process start."
            )
        else:
            lines.append(
                f"- {who}: cnn4 never reached {tta['target']} within the epoch budget; "
                f"best test accuracy {r['best_test_accuracy']:.4f}."
            )
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The benchmark's results as markdown (what docs/PERFORMANCE.md quotes)."""
    lines = [
        f"Measured {report['date']} on {report['machine']}; medians of {report['repeats']} interleaved rounds.",
        *_hardware_lines(report),
        "",
        *_speed_rows(report["configs"]),
        *_peer_rows(report["configs"]),
        *_limit_rows(report),
        *_ablation_rows(report.get("ablation")),
        *_time_to_accuracy_lines(report.get("time_to_accuracy")),
    ]
    return "\n".join(lines)
