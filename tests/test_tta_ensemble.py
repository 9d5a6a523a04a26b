"""Test-time augmentation and ensembles: logits averaged over views of a batch and over
training runs, checked against logits computed here view by view and model by model."""

import functools
import json
import os
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import optax
import pytest
from conftest import load_config

from fmnist_jax import (
    NUM_CLASSES,
    checkpointing,
    configuration,
    ensemble,
    evaluate,
    input_pipeline,
    steps,
    train,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIFT = 2  # tta_shift of the flip_translate run: not the default, so that it must be passed on.


def tiny_config(**overrides):
    """mlp_128 for one epoch on 600 training images (18 steps of 32 at a constant rate:
    about 0.5 test accuracy, a model whose predictions TTA and ensembling can change)."""
    config = load_config("mlp_128")
    config.update(
        {
            "validation_fraction": 0.99,
            "num_epochs": 1,
            "schedule": "constant",
            "write_report": False,
            **overrides,
        }
    )
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished runs on the same split: 'plain' (no TTA) and 'tta' (flip_translate,
    another seed); their workdirs and results."""
    root = tmp_path_factory.mktemp("runs")
    overrides = {"plain": {}, "tta": {"tta": "flip_translate", "tta_shift": SHIFT, "seed": 1}}
    results = {
        name: train.train_and_evaluate(tiny_config(**o), str(root / name)) for name, o in overrides.items()
    }
    return {name: str(root / name) for name in overrides}, results


@pytest.fixture(scope="module")
def tiny_splits():
    return input_pipeline.load_splits(validation_fraction=0.99)


def restored_state(workdir):
    config = evaluate.load_workdir_config(workdir)
    manager = checkpointing.create_manager(workdir, create=False)
    _, template = steps.create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch=1)
    state, _ = checkpointing.restore(manager, checkpointing.select_step(manager, "latest"), template)
    return state


def shifted(x, d):
    """Every NHWC image moved by d pixels down and right (negative: up, left), zero fill."""
    out = np.zeros_like(x)
    h, w = x.shape[1:3]
    out[:, max(d, 0) : h + min(d, 0), max(d, 0) : w + min(d, 0)] = x[
        :, max(-d, 0) : h - max(d, 0), max(-d, 0) : w - max(d, 0)
    ]
    return out


def numpy_views(images, tta, shift):
    """The test-time views of uint8 images, built here with numpy."""
    x = images.astype(np.float32) / np.float32(255.0)
    mirrored = np.ascontiguousarray(x[:, :, ::-1])
    views = [x] if tta == "none" else [x, mirrored]
    if tta == "flip_translate":
        views += [shifted(v, d) for d in (-shift, shift) for v in (x, mirrored)]
    return views


@functools.partial(jax.jit, static_argnums=0)
def plain_logits(apply_fn, params, x):
    """The model on one view: no batch norm, no moving average (the MLPs here have neither)."""
    return apply_fn({"params": params}, x, train=False)


def logits_here(state, images, tta, shift):
    assert not state.batch_stats and state.ema_params is None
    per_view = [
        np.asarray(plain_logits(state.apply_fn, state.params, v)) for v in numpy_views(images, tta, shift)
    ]
    return np.mean(np.stack(per_view), axis=0), per_view


def split_logits_here(state, split, tta, shift, batch_size=1000):
    """Logits of a whole split, in the evaluation's padded batches, padding dropped."""
    batches = input_pipeline.eval_batches(split, batch_size)
    return np.concatenate([logits_here(state, images, tta, shift)[0] for images, _, _ in batches])[
        : len(split)
    ]


def sums_here(logits, labels):
    """Summed cross-entropy and confusion matrix, in numpy."""
    z = logits.astype(np.float64)
    z_max = z.max(-1, keepdims=True)
    log_norm = np.log(np.exp(z - z_max).sum(-1)) + z_max[:, 0]
    loss_sum = float(np.sum(log_norm - z[np.arange(len(labels)), labels]))
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    np.add.at(confusion, (labels, np.argmax(logits, -1)), 1)
    return loss_sum, confusion


@pytest.mark.parametrize("tta", ["flip", "flip_translate"])
def test_tta_logits_are_the_mean_over_views_computed_here(splits, tta):
    config = load_config("mlp_4x2")
    _, state = steps.create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch=10)
    images, labels = splits["test"].images[:300], splits["test"].labels[:300]
    expected, per_view = logits_here(state, images, tta, SHIFT)
    assert len(per_view) == {"flip": 2, "flip_translate": 6}[tta]
    got = np.asarray(
        jax.jit(steps.eval_logits, static_argnames=("tta", "tta_shift"))(
            state, images, tta=tta, tta_shift=SHIFT
        )
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    for view in per_view:  # The mean is not any one view's logits.
        assert np.max(np.abs(view - expected)) > 1e-3

    config.tta, config.tta_shift = tta, SHIFT
    mask = np.ones(len(labels), np.float32)
    sums = jax.jit(steps.configured_eval_step(config))(state, (images, labels, mask))
    loss_sum, confusion = sums_here(expected, labels)
    np.testing.assert_array_equal(np.asarray(sums["confusion"]), confusion)
    assert float(sums["loss_sum"]) == pytest.approx(loss_sum, rel=1e-5)
    _, plain_confusion = sums_here(per_view[0], labels)
    assert not np.array_equal(confusion, plain_confusion)  # TTA changed some predictions.


def old_eval_step(state, batch, *, normalize=True):
    """eval_step as it was before test-time augmentation."""
    images, labels, mask = batch
    logits = state.apply_fn(
        steps.model_variables(state, steps.eval_params(state)),
        steps.preprocess(images, normalize),
        train=False,
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    predicted = jax.numpy.argmax(logits, -1)
    confusion = jax.numpy.einsum(
        "n,ni,nj->ij", mask, jax.nn.one_hot(labels, NUM_CLASSES), jax.nn.one_hot(predicted, NUM_CLASSES)
    )
    return {"loss_sum": jax.numpy.sum(loss * mask), "confusion": confusion}


@pytest.mark.parametrize("name", ["mlp_4x2", "cnn2_dropout"])
def test_no_tta_is_bit_identical_to_the_evaluation_before_it(splits, name):
    config = load_config(name)
    assert config.tta == "none"
    config.ema_decay = 0.9
    _, state = steps.create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch=10)
    # A moving average unlike the params: evaluation must keep using the average.
    state = state.replace(ema_params=jax.tree_util.tree_map(lambda p: 0.5 * p, state.params))
    images, labels = splits["test"].images[:100], splits["test"].labels[:100]
    mask = (np.arange(100) < 90).astype(np.float32)  # Padding in the batch too.
    old = jax.jit(old_eval_step)(state, (images, labels, mask))
    new = jax.jit(steps.configured_eval_step(config))(state, (images, labels, mask))
    np.testing.assert_array_equal(np.asarray(new["confusion"]), np.asarray(old["confusion"]))
    np.testing.assert_array_equal(np.asarray(new["loss_sum"]), np.asarray(old["loss_sum"]))

    def old_logits(state, images):  # The model call of old_eval_step.
        variables = steps.model_variables(state, steps.eval_params(state))
        return state.apply_fn(variables, steps.preprocess(images, True), train=False)

    np.testing.assert_array_equal(
        np.asarray(jax.jit(steps.eval_logits)(state, images)), np.asarray(jax.jit(old_logits)(state, images))
    )


def test_configs_saved_before_tta_existed_evaluate_without_it():
    saved = tiny_config().to_dict()
    del saved["tta"], saved["tta_shift"]
    options = steps.eval_options(ml_collections.ConfigDict(saved))
    assert options == {"normalize": True, "tta": "none", "tta_shift": 1}
    assert steps.eval_options(tiny_config(tta="flip", tta_shift=3)) == {
        "normalize": True,
        "tta": "flip",
        "tta_shift": 3,
    }


def test_training_evaluates_validation_and_test_with_its_tta(runs, tiny_splits):
    """The final test evaluation and every epoch's validation use the run's TTA."""
    workdirs, results = runs
    state = restored_state(workdirs["tta"])
    with open(os.path.join(workdirs["tta"], "metrics.jsonl")) as f:
        last_epoch = [json.loads(line) for line in f][-1]
    confusion = {}
    for name in ("validation", "test"):
        split = tiny_splits[name]
        confusion[name] = sums_here(split_logits_here(state, split, "flip_translate", SHIFT), split.labels)[1]
        without = sums_here(split_logits_here(state, split, "none", SHIFT), split.labels)[1]
        assert not np.array_equal(confusion[name], without)
    assert results["tta"]["test"]["confusion_matrix"] == confusion["test"].tolist()
    assert last_epoch["validation_accuracy"] == np.trace(confusion["validation"]) / len(
        tiny_splits["validation"]
    )


@pytest.mark.parametrize("name", ["plain", "tta"])
def test_ensemble_of_one_run_equals_its_eval(runs, name, tmp_path):
    workdirs, results = runs
    evaluated = evaluate.evaluate_checkpoint(workdirs[name], "best")
    output = str(tmp_path / "out" / "ensemble.json")
    ensembled = ensemble.evaluate_ensemble([workdirs[name]], "best", output)
    for split in ("validation", "test"):
        assert ensembled[split]["confusion_matrix"] == evaluated[split]["confusion_matrix"]
        assert ensembled[split]["per_class_accuracy"] == evaluated[split]["per_class_accuracy"]
        assert ensembled[split]["accuracy"] == evaluated[split]["accuracy"]
        assert ensembled[split]["loss"] == pytest.approx(evaluated[split]["loss"], rel=1e-5)
    assert evaluated["test"]["confusion_matrix"] == results[name]["test"]["confusion_matrix"]
    tta = {"plain": "none", "tta": "flip_translate"}[name]
    step = results[name]["step"]
    assert ensembled["members"] == [
        {"workdir": workdirs[name], "config": "mlp_128", "step": step, "tta": tta}
    ]
    with open(output) as f:
        written = json.load(f)
    assert written["test"] == ensembled["test"] and written["members"] == ensembled["members"]
    assert {"machine", "git", "versions"} <= set(written)


def launch(*args):
    proc = subprocess.run(
        [sys.executable, "launch.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        timeout=300,
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_ensemble_of_two_runs_is_the_mean_of_their_logits(runs, tiny_splits, tmp_path):
    """Through launch.py: two --workdir, one with TTA; the ensemble's numbers equal those
    of the mean of the two models' logits computed here, and neither model's alone."""
    workdirs, _ = runs
    output = tmp_path / "two.json"
    rc, out = launch(
        "--mode=ensemble",
        f"--workdir={workdirs['plain']}",
        f"--workdir={workdirs['tta']}",
        f"--output={output}",
    )
    assert rc == 0, out
    assert "ensemble of 2" in out and str(output) in out
    with open(output) as f:
        report = json.load(f)
    assert [m["workdir"] for m in report["members"]] == [workdirs["plain"], workdirs["tta"]]
    plain, tta = restored_state(workdirs["plain"]), restored_state(workdirs["tta"])
    for name in ("validation", "test"):
        split = tiny_splits[name]
        a = split_logits_here(plain, split, "none", SHIFT)
        b = split_logits_here(tta, split, "flip_translate", SHIFT)
        loss_sum, confusion = sums_here((a + b) / np.float32(2), split.labels)
        assert report[name]["confusion_matrix"] == confusion.tolist()
        assert report[name]["loss"] == pytest.approx(loss_sum / len(split), rel=1e-5)
        for alone in (a, b):
            assert not np.array_equal(sums_here(alone, split.labels)[1], confusion)


def test_ensemble_refuses_members_on_another_split(runs, tmp_path):
    workdirs, _ = runs
    other = tmp_path / "other_split"
    shutil.copytree(workdirs["plain"], other)
    with open(other / "config.json") as f:
        saved = json.load(f)
    with open(other / "config.json", "w") as f:
        json.dump({**saved, "split_seed": 1}, f)
    rc, out = launch(
        "--mode=ensemble",
        f"--workdir={workdirs['plain']}",
        f"--workdir={other}",
        f"--output={tmp_path / 'x.json'}",
    )
    assert rc == 1
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: ensemble members must share the data split: {other} has split_seed=1, {workdirs['plain']} has 0"
    ], out
    assert "Traceback" not in out and not (tmp_path / "x.json").exists()
    with open(other / "config.json", "w") as f:
        json.dump({**saved, "validation_fraction": 0.1}, f)
    with pytest.raises(configuration.ConfigError, match=r"validation_fraction=0\.1, .* has 0\.99"):
        ensemble.evaluate_ensemble([workdirs["plain"], str(other)], "best", str(tmp_path / "x.json"))


def test_ensemble_without_workdirs_or_checkpoints_is_a_one_line_error(runs, tmp_path):
    workdirs, _ = runs
    rc, out = launch("--mode=ensemble", f"--output={tmp_path / 'x.json'}")
    assert rc == 1 and "Traceback" not in out
    assert [line for line in out.splitlines() if line.startswith("error: ")] == [
        "error: --mode=ensemble needs at least one --workdir (a training run)"
    ], out
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    shutil.copy(os.path.join(workdirs["plain"], "config.json"), untrained)
    with pytest.raises(checkpointing.CheckpointError, match="no checkpoints in"):
        ensemble.evaluate_ensemble([workdirs["plain"], str(untrained)], "best", str(tmp_path / "x.json"))
    with pytest.raises(checkpointing.CheckpointError, match=r"holds no config\.json"):
        ensemble.evaluate_ensemble(
            [workdirs["plain"], str(tmp_path / "nowhere")], "best", str(tmp_path / "x.json")
        )
    assert not (tmp_path / "x.json").exists()


def test_only_ensemble_takes_several_workdirs(runs):
    workdirs, _ = runs
    rc, out = launch("--mode=eval", f"--workdir={workdirs['plain']}", f"--workdir={workdirs['tta']}")
    assert rc == 1 and "only --mode=ensemble takes several" in out and "Traceback" not in out


def _text_or_none(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return f.read()


def test_eval_with_another_tta_uses_those_views(runs, tiny_splits, tmp_path):
    """--tta replaces the run's own views: the flip_translate run (shift 2) evaluated
    without TTA, the plain run with flips, each against logits computed here; the run's
    own eval_<step>.json is left alone."""
    workdirs, results = runs
    step = results["tta"]["step"]
    own = os.path.join(workdirs["tta"], f"eval_{step}.json")  # Another test may have written it.
    before = _text_or_none(own)
    rc, out = launch("--mode=eval", f"--workdir={workdirs['tta']}", "--checkpoint=latest", "--tta=none")
    assert rc == 0, out
    with open(os.path.join(workdirs["tta"], f"eval_{step}_tta_none.json")) as f:
        written = json.load(f)
    assert written["tta"] == "none"
    assert _text_or_none(own) == before
    cases = {"tta": ("none", SHIFT, written), "plain": ("flip", 1, None)}
    for name, (tta, shift, given) in cases.items():
        report = given or evaluate.evaluate_checkpoint(workdirs[name], "latest", tta=tta)
        state = restored_state(workdirs[name])
        for split_name in ("validation", "test"):
            split = tiny_splits[split_name]
            loss_sum, confusion = sums_here(split_logits_here(state, split, tta, shift), split.labels)
            assert report[split_name]["confusion_matrix"] == confusion.tolist()
            assert report[split_name]["loss"] == pytest.approx(loss_sum / len(split), rel=1e-5)
    assert written["test"]["confusion_matrix"] != results["tta"]["test"]["confusion_matrix"]
    ensembled = ensemble.evaluate_ensemble([workdirs["tta"]], "latest", str(tmp_path / "e.json"), tta="none")
    assert ensembled["test"]["confusion_matrix"] == written["test"]["confusion_matrix"]
    assert ensembled["members"][0]["tta"] == "none"
    with pytest.raises(configuration.ConfigError, match=r"tta='mirror': expected one of"):
        evaluate.load_workdir_config(workdirs["plain"], "mirror")
