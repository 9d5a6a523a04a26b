"""The figures of a finished run, in `<workdir>/report/` (PNG) and TensorBoard.

samples.png (training images with class names), learning_curves.png (loss and
accuracy per epoch, train vs validation), confusion_matrix.png (counts and
row-normalized), predictions.png (test images, green titles right, red wrong),
model_summary.txt (layers, shapes, parameters, FLOPs) and report.html tying them
together with the config and the final numbers, readable offline.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fmnist_jax import CLASS_NAMES

FIGURES = ("samples.png", "learning_curves.png", "confusion_matrix.png", "predictions.png")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _image_grid(
    images: np.ndarray, titles: Sequence[str], colors: Sequence[str], path: str, title: str
) -> None:
    plt = _pyplot()
    n = int(np.ceil(np.sqrt(len(images))))
    fig, axes = plt.subplots(n, n, figsize=(8, 8.6), dpi=100)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, t, c in zip(axes.ravel(), images, titles, colors, strict=False):
        ax.imshow(image[:, :, 0], cmap="gray", vmin=0, vmax=255)
        ax.set_title(t, color=c, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def samples_figure(images: np.ndarray, labels: np.ndarray, path: str) -> None:
    _image_grid(images, [CLASS_NAMES[i] for i in labels], ["black"] * len(labels), path, "Training samples")


def predictions_figure(images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, path: str) -> None:
    titles = [f"{CLASS_NAMES[p]}\n(true: {CLASS_NAMES[t]})" for p, t in zip(predicted, labels, strict=True)]
    colors = ["green" if p == t else "red" for p, t in zip(predicted, labels, strict=True)]
    right = int(np.sum(predicted == labels))
    _image_grid(images, titles, colors, path, f"Test predictions: {right}/{len(labels)} right")


def learning_curves_figure(records: Sequence[dict[str, float]], path: str) -> None:
    plt = _pyplot()
    epochs = [r["epoch"] for r in records]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for ax, key in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in records], "o-", label="train")
        ax.plot(epochs, [r[f"validation_{key}"] for r in records], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Learning curves")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def confusion_figure(confusion: np.ndarray, path: str) -> None:
    plt = _pyplot()
    confusion = np.asarray(confusion)
    normalized = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    fig, axes = plt.subplots(1, 2, figsize=(16, 7), dpi=100)
    for ax, values, fmt, title in (
        (axes[0], confusion, "d", "counts"),
        (axes[1], normalized, ".2f", "row-normalized"),
    ):
        ax.imshow(values, cmap="Blues")
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                color = "white" if values[i, j] > values.max() / 2 else "black"
                ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", color=color, fontsize=7)
        ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"Test confusion matrix ({title})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def model_summary(model: Any, flops_per_image: float | None) -> str:
    """nn.tabulate's table (layers, shapes, parameters) and the forward FLOPs."""
    import jax
    import jax.numpy as jnp

    table = model.tabulate(
        jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)), train=False, console_kwargs={"width": 120}
    )
    table = re.sub(r"\x1b\[[0-9;]*m", "", table)  # Plain text: no terminal colours.
    flops = "unknown" if flops_per_image is None else f"{flops_per_image / 1e6:.2f} MFLOP"
    return f"{table}\nForward pass per image: {flops} (XLA cost analysis)\n"


def forward_flops(model: Any, variables: Any) -> float | None:
    """FLOPs of one image's forward pass, from XLA's cost analysis (None if unavailable)."""
    import jax
    import jax.numpy as jnp

    compiled = (
        jax.jit(lambda v, x: model.apply(v, x, train=False))
        .lower(variables, jnp.zeros((1, 28, 28, 1)))
        .compile()
    )
    cost = compiled.cost_analysis()
    if isinstance(cost, list):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def write_report(
    workdir: str,
    *,
    config: Any,
    results: dict[str, Any],
    records: Sequence[dict[str, float]],
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    predict_fn: Callable[[np.ndarray], np.ndarray],
    model: Any,
    variables: Any,
    tensorboard_writer: Any = None,
) -> str:
    """Writes every figure, model_summary.txt and report.html; returns the report folder."""
    out = os.path.join(workdir, "report")
    os.makedirs(out, exist_ok=True)
    samples_figure(train_images[:25], train_labels[:25], os.path.join(out, "samples.png"))
    learning_curves_figure(records, os.path.join(out, "learning_curves.png"))
    confusion_figure(
        np.asarray(results["test"]["confusion_matrix"]), os.path.join(out, "confusion_matrix.png")
    )
    predicted = predict_fn(test_images[:25])
    predictions_figure(test_images[:25], test_labels[:25], predicted, os.path.join(out, "predictions.png"))
    summary = model_summary(model, forward_flops(model, variables))
    with open(os.path.join(out, "model_summary.txt"), "w") as f:
        f.write(summary)
    if tensorboard_writer is not None:
        _figures_to_tensorboard(out, results["step"], tensorboard_writer)
    page = _html_page(config, results, summary)
    with open(os.path.join(out, "report.html"), "w") as f:
        f.write(page)
    return out


def _figures_to_tensorboard(out: str, step: int, writer: Any) -> None:
    pngs = {}
    for name in FIGURES:
        with open(os.path.join(out, name), "rb") as f:
            pngs[name[:-4]] = f.read()
    writer.write_pngs(step, pngs)
    writer.flush()


def _html_page(config: Any, results: dict[str, Any], summary: str) -> str:
    """report.html: the headline numbers, the figures, the model and the config."""
    test = results["test"]
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{acc:.4f}</td></tr>"
        for name, acc in test["per_class_accuracy"].items()
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(results["config"])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} img{{max-width:100%}}
td,th{{padding:2px 10px;text-align:left}} pre{{background:#f4f4f4;padding:1em;overflow:auto}}</style></head>
<body>
<h1>{html.escape(results["config"])}</h1>
<p>Test accuracy <b>{test["accuracy"]:.4f}</b>, test loss {test["loss"]:.4f} on {test["count"]:,} images;
validation accuracy {results["validation"]["accuracy"]:.4f}. {results["num_params"]:,} parameters,
{results["num_epochs"]} epochs at batch {results["batch_size"]}, {results["train_seconds"]:.0f} s training,
{results["wall_seconds"]:.0f} s wall on {html.escape(results["machine"])}.</p>
<h2>Learning curves</h2><img src="learning_curves.png" alt="learning curves">
<h2>Test confusion matrix</h2><img src="confusion_matrix.png" alt="confusion matrix">
<h2>Per-class test accuracy</h2><table><tr><th>class</th><th>accuracy</th></tr>{rows}</table>
<h2>Test predictions</h2><img src="predictions.png" alt="prediction grid">
<h2>Training samples</h2><img src="samples.png" alt="training samples">
<h2>Model</h2><pre>{html.escape(summary)}</pre>
<h2>Config</h2><pre>{html.escape(json.dumps(json.loads(config.to_json_best_effort()), indent=2))}</pre>
</body></html>
"""
