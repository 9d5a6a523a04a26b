"""Classify user images with a trained checkpoint (--mode=predict).

Each image is converted the way Fashion-MNIST was made: grayscale, the object
fitted into 28x28 keeping its aspect ratio, on a dark background (an image whose
border is mostly light is inverted). A file that cannot be used gets one error
line; the other images are still classified.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from fmnist_jax import CLASS_NAMES, evaluate, parallel, steps

MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_PIXELS = 50_000_000


class ImageError(ValueError):
    """A file that cannot be classified; the message says why."""


def load_image(path: str) -> np.ndarray:
    """A (28, 28, 1) uint8 image prepared as Fashion-MNIST's were."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not os.path.isfile(path):
        raise ImageError(f"{path}: no such file")
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise ImageError(f"{path}: {size:,} bytes is larger than the {MAX_FILE_BYTES:,}-byte limit")
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(
                    f"{path}: {img.width}x{img.height} pixels is more than the {MAX_PIXELS:,}-pixel limit"
                )
            gray = _grayscale(ImageOps.exif_transpose(img))
    except UnidentifiedImageError as e:
        raise ImageError(f"{path}: not an image PIL can read") from e
    except (OSError, Image.DecompressionBombError) as e:
        raise ImageError(f"{path}: cannot be read as an image ({e})") from e
    pixels = np.asarray(gray, np.uint8)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if border.mean() > 127:  # Light background: Fashion-MNIST objects are light on black.
        gray = ImageOps.invert(gray)
    fitted = ImageOps.pad(gray, (28, 28), method=Image.Resampling.LANCZOS, color=0)
    return np.asarray(fitted, np.uint8)[:, :, None]


def _grayscale(img: Any) -> Any:
    """An 'L' image; 16-bit grayscale is scaled to 8 bits (Pillow's convert("L") clips it at 255)."""
    from PIL import Image

    if img.mode.startswith("I"):  # 'I;16', 'I;16B', ...; and 'I', as Pillow opens some 16-bit files.
        wide = np.clip(np.asarray(img, np.int64), 0, 65535)
        return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))
    return img.convert("L")


def predict_files(
    workdir: str, paths: Sequence[str], which: str = "best", top: int = 3
) -> list[dict[str, Any]]:
    """Top-`top` classes with probabilities for each path; failures carry an 'error'."""
    config = evaluate.load_workdir_config(workdir)
    par = parallel.DataParallel("jit", jax.local_devices()[:1])
    state, _ = evaluate.restore_checkpoint(workdir, config, which, par)
    options = steps.eval_options(config)

    @jax.jit
    def probabilities(images: jax.Array) -> jax.Array:
        # As evaluation scores: the moving average if the run kept one, and its test-time views.
        return jax.nn.softmax(steps.eval_logits(state, images, **options))

    results: list[dict[str, Any]] = []
    for path in paths:
        try:
            image = load_image(path)
        except ImageError as e:
            results.append({"path": path, "error": str(e)})
            continue
        probs = np.asarray(probabilities(image[None]))[0]
        order = np.argsort(-probs)[:top]
        results.append(
            {"path": path, "top": [{"class": CLASS_NAMES[i], "probability": float(probs[i])} for i in order]}
        )
    return results


def format_results(results: Sequence[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        if "error" in r:
            lines.append(f"error: {r['error']}")
        else:
            best = ", ".join(f"{t['class']} {t['probability']:.1%}" for t in r["top"])
            lines.append(f"{r['path']}: {best}")
    return "\n".join(lines)
