"""--mode=predict: user images through a trained checkpoint."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import load_config
from PIL import Image

from fmnist_jax import CLASS_NAMES, checkpointing, evaluate, predict, steps, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# load_image alone (no checkpoint): README promises "images of any size and mode".


@pytest.fixture
def garment(splits):
    """A real test image (28x28 uint8, dark background) for load_image's unit tests."""
    image = splits["test"].images[0, :, :, 0]
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    assert border.mean() < 100 and image.max() > 200  # Not inverted; uses the 8-bit range.
    return image


def load(path) -> np.ndarray:
    image = predict.load_image(str(path))
    assert image.shape == (28, 28, 1) and image.dtype == np.uint8
    return image[:, :, 0]


@pytest.mark.parametrize("axis", [0, 1], ids=["wide_28x14", "tall_14x28"])
def test_non_square_image_is_centred_on_black_unresized(garment, tmp_path, axis):
    # Every other row (a 28-wide, 14-high image) or column (14 wide, 28 high): its long
    # side is already 28, so it must come back unresampled, centred between 7-pixel bars.
    content = garment[::2] if axis == 0 else garment[:, ::2]
    Image.fromarray(content).save(tmp_path / "half.png")
    bars = [(0, 0), (0, 0)]
    bars[axis] = (7, 7)
    np.testing.assert_array_equal(load(tmp_path / "half.png"), np.pad(content, bars))


def test_larger_non_square_light_image_is_shrunk_keeping_aspect_and_inverted(tmp_path):
    # 56 wide, 28 high, uniformly light: inverted to 25, shrunk to 28x14 (a constant stays
    # constant under any normalised resampling filter), padded with black, not with light.
    Image.fromarray(np.full((28, 56), 230, np.uint8)).save(tmp_path / "wide.png")
    np.testing.assert_array_equal(
        load(tmp_path / "wide.png"), np.pad(np.full((14, 28), 25), [(7, 7), (0, 0)])
    )


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA"])
def test_colour_and_alpha_modes_load_as_their_gray_values_alpha_ignored(garment, tmp_path, mode):
    alpha = (np.arange(28 * 28).reshape(28, 28) * 37 % 256).astype(np.uint8)  # Any alpha.
    planes = {"RGB": [garment] * 3, "RGBA": [garment] * 3 + [alpha], "LA": [garment, alpha]}[mode]
    image = Image.fromarray(np.stack(planes, axis=-1))
    assert image.mode == mode
    image.save(tmp_path / "image.png")
    np.testing.assert_array_equal(load(tmp_path / "image.png"), garment)


def test_rgba_image_loads_as_the_same_rgb_image(garment, tmp_path):
    rgb = np.stack([garment, garment // 2, (garment.astype(int) * 3 // 4).astype(np.uint8)], axis=-1)
    alpha = (np.arange(28 * 28).reshape(28, 28) * 37 % 256).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "rgba.png")
    rgb_result = load(tmp_path / "rgb.png")
    assert rgb_result.max() > 100  # Something to compare, not all black.
    np.testing.assert_array_equal(load(tmp_path / "rgba.png"), rgb_result)


def test_palette_image_loads_as_the_gray_of_its_colours(tmp_path):
    colours = np.array(
        [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128], [200, 100, 50], [30, 60, 90],
         [250, 240, 0], [255, 255, 255]]
    )  # fmt: skip
    luma = colours @ [0.299, 0.587, 0.114]  # ITU-R 601-2, as Pillow's convert("L").
    assert np.all(np.abs(luma - np.floor(luma) - 0.5) > 0.05)  # No rounding ties.
    indices = np.zeros((28, 28), np.uint8)  # Index 0 (black) on the border: not inverted.
    indices[1:-1, 1:-1] = np.arange(26 * 26).reshape(26, 26) % len(colours)
    image = Image.frombytes("P", (28, 28), indices.tobytes())
    image.putpalette(colours.astype(np.uint8).ravel().tolist())
    image.save(tmp_path / "palette.png")
    with Image.open(tmp_path / "palette.png") as saved:
        assert saved.mode == "P"
    np.testing.assert_array_equal(load(tmp_path / "palette.png"), np.rint(luma).astype(np.uint8)[indices])


@pytest.mark.parametrize("suffix", ["png", "tif"])
def test_16_bit_grayscale_is_scaled_to_8_bits_not_clipped(garment, tmp_path, suffix):
    # v * 257 maps 0..255 onto 0..65535 exactly: it must load back as the 8-bit original.
    # PNG opens as 'I;16'; a TIFF of 32-bit integers opens as 'I', the mode older Pillows
    # gave 16-bit PNGs. Pillow's own convert("L") clips both at 255 (all but black -> white).
    wide = garment.astype(np.uint16) * 257 if suffix == "png" else garment.astype(np.int32) * 257
    Image.fromarray(wide).save(tmp_path / f"deep.{suffix}")
    with Image.open(tmp_path / f"deep.{suffix}") as saved:
        assert saved.mode == ("I;16" if suffix == "png" else "I")
    np.testing.assert_array_equal(load(tmp_path / f"deep.{suffix}"), garment)


def test_byte_limit(garment, tmp_path):
    # A valid PNG padded with (sparse) zeros after its end: readable, so only the size
    # check can refuse it.
    path = tmp_path / "padded.png"
    Image.fromarray(garment).save(path)
    with open(path, "r+b") as f:
        f.truncate(predict.MAX_FILE_BYTES)
    np.testing.assert_array_equal(load(path), garment)  # Exactly at the limit: fine.
    with open(path, "r+b") as f:
        f.truncate(predict.MAX_FILE_BYTES + 1)
    with pytest.raises(predict.ImageError, match=r"bytes is larger than the [\d,]+-byte limit"):
        predict.load_image(str(path))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("predict_run")
    config = load_config("mlp_256")
    config.num_epochs = 1
    config.batch_size = 256
    train.train_and_evaluate(config, str(workdir))
    return workdir


def confident_test_image(workdir, splits):
    """A test image the checkpoint classifies with > 95% probability, and its class."""
    config = evaluate.load_workdir_config(str(workdir))
    manager = checkpointing.create_manager(str(workdir), create=False)
    _, template = steps.create_train_state(config, jax.random.PRNGKey(0), 1)
    state, _ = checkpointing.restore(manager, manager.best_step(), template)
    images = splits["test"].images[:200]
    logits = state.apply_fn({"params": state.params}, steps.preprocess(images, True), train=False)
    probs = np.asarray(jax.nn.softmax(logits))
    i = int(np.flatnonzero(probs.max(axis=1) > 0.95)[0])
    return images[i, :, :, 0], CLASS_NAMES[int(probs[i].argmax())]


def test_dataset_image_round_trips_and_light_background_is_inverted(trained, splits, tmp_path):
    image, expected = confident_test_image(trained, splits)
    Image.fromarray(image).save(tmp_path / "same.png")
    # Light background, 5x larger, RGB: what a user's photo-like file looks like.
    big = Image.fromarray(255 - image).resize((140, 140), Image.Resampling.NEAREST).convert("RGB")
    big.save(tmp_path / "big_light.jpg", quality=95)
    np.testing.assert_array_equal(predict.load_image(str(tmp_path / "same.png"))[:, :, 0], image)
    results = predict.predict_files(
        str(trained), [str(tmp_path / "same.png"), str(tmp_path / "big_light.jpg")]
    )
    for r in results:
        assert r["top"][0]["class"] == expected
        probs = [t["probability"] for t in r["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6


def test_predict_scores_as_evaluation_does_moving_average_and_test_time_views(splits, tmp_path):
    """A run with a moving average of the weights and flip TTA: predict's probabilities
    are the softmax of `eval_logits` (the average, both views), not of the latest params."""
    config = load_config("mlp_256")
    config.update(
        {"num_epochs": 1, "batch_size": 256, "ema_decay": 0.99, "tta": "flip", "write_report": False}
    )
    train.train_and_evaluate(config, str(tmp_path / "run"))
    manager = checkpointing.create_manager(str(tmp_path / "run"), create=False)
    _, template = steps.create_train_state(config, jax.random.PRNGKey(0), 1)
    state, _ = checkpointing.restore(manager, manager.best_step(), template)
    image = splits["test"].images[7]
    Image.fromarray(image[:, :, 0]).save(tmp_path / "x.png")
    [result] = predict.predict_files(str(tmp_path / "run"), [str(tmp_path / "x.png")])
    got = {t["class"]: t["probability"] for t in result["top"]}
    expected = np.asarray(jax.nn.softmax(steps.eval_logits(state, image[None], tta="flip")))[0]
    latest = np.asarray(jax.nn.softmax(steps.eval_logits(state.replace(ema_params=None), image[None])))[0]
    for name, p in got.items():
        assert p == pytest.approx(float(expected[CLASS_NAMES.index(name)]), abs=1e-6)
    assert np.max(np.abs(expected - latest)) > 1e-4


def test_bad_files_get_an_error_and_the_rest_are_classified(trained, splits, tmp_path):
    image, expected = confident_test_image(trained, splits)
    Image.fromarray(image).save(tmp_path / "good.png")
    (tmp_path / "notes.png").write_text("not an image")
    Image.new("L", (8000, 7000)).save(tmp_path / "huge.png")  # 56 million pixels.
    paths = [str(tmp_path / n) for n in ("notes.png", "huge.png", "missing.png", "good.png")]
    results = predict.predict_files(str(trained), paths)
    assert "not an image" in results[0]["error"]
    assert "pixel limit" in results[1]["error"]
    assert "no such file" in results[2]["error"]
    assert results[3]["top"][0]["class"] == expected

    proc = subprocess.run(
        [
            sys.executable,
            "launch.py",
            "--mode=predict",
            f"--workdir={trained}",
            *(f"--image={p}" for p in paths),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert proc.returncode == 1  # Some files failed, yet every file has its line...
    lines = proc.stdout.strip().splitlines()
    assert (
        len(lines) == 4 and lines[0].startswith("error: ") and lines[3].startswith(f"{paths[3]}: {expected}")
    )
