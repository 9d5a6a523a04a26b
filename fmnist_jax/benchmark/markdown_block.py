"""The benchmark's results as markdown, and that text written between a named
block's markers in a docs page (docs/PERFORMANCE.md)."""

from __future__ import annotations

import os
from typing import Any


def markers(block: str = "benchmark") -> tuple[str, str]:
    return f"<!-- {block}:begin -->", f"<!-- {block}:end -->"


BEGIN, END = markers()


def update_markdown(path: str, text: str, block: str = "benchmark") -> bool:
    """Replaces the text between the block's markers in `path`; False if they are absent."""
    begin, end = markers(block)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        page = f.read()
    if begin not in page or end not in page:
        return False
    head, rest = page.split(begin, 1)
    _, tail = rest.split(end, 1)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{head}{begin}\n{text}\n{end}{tail}")
    os.replace(tmp, path)
    return True


def write_markdown(path: str, block: str, text: str) -> int:
    """Prints `text` and, if `path`, writes it into the block; an exit status."""
    print(text)
    if path:
        if update_markdown(path, text, block):
            print(f"updated the {block} block of {path}")
        else:
            begin, end = markers(block)
            print(f"{path} has no {begin} ... {end} block: not changed")
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


def _keras_setup_rows(configs: dict[str, Any]) -> list[str]:
    """Every Keras setup's img/s per config (none without Keras setups)."""
    keras_setups = {
        name: s["keras"]["setups"] for name, s in configs.items() if "setups" in s.get("keras", {})
    }
    if not keras_setups:
        return []
    names = list(next(iter(keras_setups.values())))
    lines = [
        "",
        "Keras's figure above is its fastest setup in each round; every setup (img/s):",
        "",
        "| config | " + " | ".join(f"Keras: {n}" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for name, setups in keras_setups.items():
        lines.append(f"| `{name}` | " + " | ".join(f"{setups[n]:,.0f}" for n in names) + " |")
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
        "",
        *_speed_rows(report["configs"]),
        *_keras_setup_rows(report["configs"]),
        *_ablation_rows(report.get("ablation")),
        *_time_to_accuracy_lines(report.get("time_to_accuracy")),
    ]
    return "\n".join(lines)
