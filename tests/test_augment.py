"""Augmentation on the device: shifts, random translations, cutout, alternating flips,
and their place in the train step (a function of the step's key alone)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from fmnist_jax import augment, steps


def _np_shift(images, dy, dx):
    """Moves every image by (dy, dx), filling with 0: written with numpy index arithmetic."""
    _, h, w, _ = images.shape
    out = np.zeros_like(images)
    for y in range(h):
        for x in range(w):
            if 0 <= y - dy < h and 0 <= x - dx < w:
                out[:, y, x] = images[:, y - dy, x - dx]
    return out


@pytest.fixture(scope="module")
def images(splits):
    return splits["train"].images[:32].astype(np.float32) / 255.0


@pytest.mark.parametrize("dy,dx", [(0, 0), (1, -1), (-2, 3), (4, 0)])
def test_shift_moves_the_image_and_fills_with_black(images, dy, dx):
    np.testing.assert_array_equal(
        np.asarray(augment.shift(jnp.asarray(images), dy, dx)), _np_shift(images, dy, dx)
    )


def test_random_translate_shifts_each_image_by_its_own_offset_within_range(images):
    out = np.asarray(augment.random_translate(jnp.asarray(images), jax.random.PRNGKey(3), 2))
    offsets = []
    for i in range(len(images)):
        matches = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if np.array_equal(out[i], _np_shift(images[i : i + 1], dy, dx)[0])
        ]
        assert matches, f"image {i} is not a shift of at most 2 pixels"
        offsets.append(matches[0])
    assert len(set(offsets)) > 5  # Drawn per image, not one shift for the batch.
    again = augment.random_translate(jnp.asarray(images), jax.random.PRNGKey(3), 2)
    np.testing.assert_array_equal(np.asarray(again), out)


def test_cutout_zeroes_one_square_of_the_given_side_clipped_at_the_border():
    ones = jnp.ones((64, 28, 28, 1))
    out = np.asarray(augment.cutout(ones, jax.random.PRNGKey(0), 8))[..., 0]
    full_squares = 0
    for hole in out == 0:
        rows, cols = np.nonzero(hole.any(axis=1))[0], np.nonzero(hole.any(axis=0))[0]
        assert 1 <= len(rows) <= 8 and 1 <= len(cols) <= 8
        # One filled rectangle: every pixel of its bounding box is zero.
        assert hole.sum() == len(rows) * len(cols)
        assert np.array_equal(rows, np.arange(rows[0], rows[-1] + 1))
        # Clipped only where it meets the border.
        assert len(rows) == 8 or rows[0] == 0 or rows[-1] == 27
        full_squares += hole.sum() == 64
    assert full_squares > 16  # Most centres leave the square whole.


def test_alternate_flip_mirrors_the_batch_on_odd_epochs_only(images):
    aug = augment.Augment(alternate_flip=True, steps_per_epoch=3)
    x, rng = jnp.asarray(images), jax.random.PRNGKey(0)
    for step in range(8):
        expected = images[:, :, ::-1] if (step // 3) % 2 == 1 else images
        np.testing.assert_array_equal(np.asarray(aug(x, rng, jnp.int32(step))), expected)


def test_pre_flip_mirrors_a_seeded_half_of_the_images(splits):
    raw = splits["train"].images[:2000]
    out = augment.pre_flip(raw, seed=5)
    mirrored = np.array(
        [np.array_equal(o, r[:, ::-1]) and not np.array_equal(o, r) for o, r in zip(out, raw, strict=True)]
    )
    kept = np.array([np.array_equal(o, r) for o, r in zip(out, raw, strict=True)])
    symmetric = np.array([np.array_equal(r, r[:, ::-1]) for r in raw])
    assert np.all(mirrored | kept)
    assert 800 < mirrored.sum() < 1200
    np.testing.assert_array_equal(augment.pre_flip(raw, seed=5), out)
    assert not np.array_equal(augment.pre_flip(raw, seed=6)[~symmetric], out[~symmetric])
    np.testing.assert_array_equal(raw, splits["train"].images[:2000])  # A copy; the split is untouched.


def test_the_train_step_trains_on_the_augmented_batch(splits):
    """A step with translations and cutout equals a plain step on the batch that
    `Augment` makes from the key the step derives: fold_in(fold_in(rng, step), 2)."""
    config = load_config("mlp_4x2")
    _, state = steps.create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch=10)
    state = state.replace(step=jnp.int32(7))
    images, labels = splits["train"].images[:64], splits["train"].labels[:64]
    rng = jax.random.PRNGKey(11)
    aug = augment.Augment(translate=2, cutout=6)
    augmented, _ = jax.jit(functools.partial(steps.train_step, augmentation=aug))(
        state, (images, labels), rng
    )

    key = jax.random.fold_in(jax.random.fold_in(rng, 7), 2)
    x = aug(jnp.asarray(images, jnp.float32) / 255.0, key, jnp.int32(7))
    pixels = np.asarray(jnp.round(x * 255.0)).astype(np.uint8)  # Exact: x is k / 255 or 0.
    plain, _ = jax.jit(steps.train_step)(state, (pixels, labels), rng)
    unaugmented, _ = jax.jit(steps.train_step)(state, (images, labels), rng)
    kernel = lambda s: np.asarray(s.params["Dense_0"]["kernel"])  # noqa: E731
    np.testing.assert_allclose(kernel(augmented), kernel(plain), rtol=1e-6, atol=1e-8)
    assert np.max(np.abs(kernel(augmented) - kernel(unaugmented))) > 1e-5


def test_configured_step_binds_the_config_augmentations():
    config = load_config("mlp_4x2")
    config.update({"alternate_flip": True, "augment_translate": 3, "augment_cutout": 5})
    step = steps.configured_train_step(config, steps_per_epoch=17)
    assert step.keywords["augmentation"] == augment.Augment(True, 17, 3, 5)
    with pytest.raises(ValueError, match="steps per epoch"):
        steps.configured_train_step(config)


@pytest.mark.parametrize("mode,count", [("none", 1), ("flip", 2), ("flip_translate", 6)])
def test_tta_views(images, mode, count):
    x = jnp.asarray(images)
    views = [np.asarray(v) for v in augment.tta_views(x, mode, 2)]
    expected = [images, images[:, :, ::-1]][: min(count, 2)]
    if count == 6:
        flipped = images[:, :, ::-1]
        expected += [_np_shift(images, -2, -2), _np_shift(flipped, -2, -2)]
        expected += [_np_shift(images, 2, 2), _np_shift(flipped, 2, 2)]
    assert len(views) == count
    for got, want in zip(views, expected, strict=True):
        np.testing.assert_array_equal(got, want)
