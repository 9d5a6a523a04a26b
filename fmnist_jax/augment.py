"""Image augmentation on the device, inside the (scanned) train step, and the views
of test-time augmentation.

Images are NHWC floats; whatever a shift or a cutout uncovers is 0 (black, the
Fashion-MNIST background). Every random draw comes from the key the step passes
in, itself a function of (seed, step), so a resumed run draws the same.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np


def flip(x: jax.Array) -> jax.Array:
    """Mirrors every image left-right."""
    return x[:, :, ::-1, :]


def shift(x: jax.Array, dy: int, dx: int) -> jax.Array:
    """Every image moved down by `dy` and right by `dx` pixels (negative: up, left)."""
    _, h, w, _ = x.shape
    p = max(abs(dy), abs(dx))
    padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    return padded[:, p - dy : p - dy + h, p - dx : p - dx + w, :]


def random_flip(x: jax.Array, rng: jax.Array) -> jax.Array:
    """Each image mirrored left-right with probability 1/2."""
    mirrored = jax.random.bernoulli(rng, 0.5, (x.shape[0], 1, 1, 1))
    return jnp.where(mirrored, flip(x), x)


def random_translate(x: jax.Array, rng: jax.Array, max_shift: int) -> jax.Array:
    """Each image moved by its own (dy, dx), each uniform in [-max_shift, max_shift]:
    a random crop of the image zero-padded by `max_shift` on every side."""
    n, h, w, c = x.shape
    offsets = jax.random.randint(rng, (n, 2), 0, 2 * max_shift + 1)
    padded = jnp.pad(x, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))

    def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def cutout(x: jax.Array, rng: jax.Array, size: int) -> jax.Array:
    """Each image with a `size` x `size` square set to 0, centred on a uniformly drawn
    pixel (the square may hang over the border, as in the cutout paper)."""
    n, h, w, _ = x.shape
    y_rng, x_rng = jax.random.split(rng)
    centre_y, centre_x = jax.random.randint(y_rng, (n, 1), 0, h), jax.random.randint(x_rng, (n, 1), 0, w)
    top, left = centre_y - size // 2, centre_x - size // 2
    rows = (jnp.arange(h) >= top) & (jnp.arange(h) < top + size)  # (n, h)
    cols = (jnp.arange(w) >= left) & (jnp.arange(w) < left + size)  # (n, w)
    hole = rows[:, :, None, None] & cols[:, None, :, None]
    return jnp.where(hole, jnp.zeros((), x.dtype), x)


@dataclasses.dataclass(frozen=True)
class Augment:
    """The training augmentations beyond random flips (`config.augment_flip`).

    `alternate_flip`: the whole batch mirrored on odd epochs; with the training
    images given a random mirroring once (`pre_flip`), each image is seen mirrored
    on alternate epochs rather than by chance. `steps_per_epoch` says where epochs
    start. `translate`: random shifts of up to this many pixels. `cutout`: a square
    hole of this side (0: off).
    """

    alternate_flip: bool = False
    steps_per_epoch: int = 0
    translate: int = 0
    cutout: int = 0

    def __call__(self, x: jax.Array, rng: jax.Array, step: jax.Array | int) -> jax.Array:
        translate_rng, cutout_rng = jax.random.split(rng)
        if self.alternate_flip:
            odd_epoch = (step // self.steps_per_epoch) % 2 == 1
            x = jnp.where(odd_epoch, flip(x), x)
        if self.translate:
            x = random_translate(x, translate_rng, self.translate)
        if self.cutout:
            x = cutout(x, cutout_rng, self.cutout)
        return x

    @property
    def active(self) -> bool:
        return self.alternate_flip or self.translate > 0 or self.cutout > 0


def from_config(config: ml_collections.ConfigDict, steps_per_epoch: int) -> Augment:
    """The config's augmentations (fields absent from older configs: off)."""
    return Augment(
        alternate_flip=bool(config.get("alternate_flip", False)),
        steps_per_epoch=steps_per_epoch,
        translate=int(config.get("augment_translate", 0)),
        cutout=int(config.get("augment_cutout", 0)),
    )


def pre_flip(images: np.ndarray, seed: int) -> np.ndarray:
    """A copy of `images` (N, H, W, C) with a random half of them mirrored, a function
    of `seed` alone: the starting point of `Augment.alternate_flip`."""
    mirrored = np.random.default_rng([seed, 0x5EED]).random(len(images)) < 0.5
    out = images.copy()
    out[mirrored] = out[mirrored][:, :, ::-1]
    return out


def training_split(config: ml_collections.ConfigDict, split: Any) -> Any:
    """The training split as the train step sees it: with `config.alternate_flip`,
    a random half of its images pre-flipped (seeded by `config.seed`)."""
    if not config.get("alternate_flip", False):
        return split
    return dataclasses.replace(split, images=pre_flip(split.images, config.seed))


NONE = Augment()  # No augmentation beyond `augment_flip`.

TTA_MODES = ("none", "flip", "flip_translate")


def tta_views(x: jax.Array, mode: str, max_shift: int = 1) -> list[jax.Array]:
    """The test-time views of a batch: itself; and its mirror ('flip'); and both moved
    by (-s, -s) and (+s, +s) pixels ('flip_translate', 6 views, as airbench)."""
    if mode not in TTA_MODES:
        raise ValueError(f"tta={mode!r} is not one of {TTA_MODES}")
    views = [x] if mode == "none" else [x, flip(x)]
    if mode == "flip_translate":
        views += [shift(v, d, d) for d in (-max_shift, max_shift) for v in views[:2]]
    return views
