"""--mode=predict: user images through a trained checkpoint."""

import importlib
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from fmnist_jax import CLASS_NAMES, checkpointing, predict, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("predict_run")
    config = importlib.import_module("configs.mlp_256").get_config()
    config.num_epochs = 1
    config.batch_size = 256
    train.train_and_evaluate(config, str(workdir))
    return workdir


def confident_test_image(workdir, splits):
    """A test image the checkpoint classifies with > 95% probability, and its class."""
    config = train.load_workdir_config(str(workdir))
    manager = checkpointing.create_manager(str(workdir), create=False)
    _, template = train.create_train_state(config, jax.random.PRNGKey(0), 1)
    state, _ = checkpointing.restore(manager, manager.best_step(), template)
    images = splits["test"].images[:200]
    logits = state.apply_fn({"params": state.params}, train.preprocess(images, True), train=False)
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
