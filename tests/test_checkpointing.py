"""Checkpoints: exact resume after kill -9 and SIGTERM, eval from a checkpoint, damage, NaN."""

import importlib
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from fmnist_jax import checkpointing, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A small CNN (batch norm, so batch_stats must resume too) with mid-epoch checkpoints.
SMALL = [
    "--config.model.conv_features=(8,8)",
    "--config.model.dense_features=(32,)",
    "--config.num_epochs=2",
    "--config.batch_size=128",
    "--config.checkpoint_every_steps=100",
    "--config.write_report=False",
]
STEPS_PER_EPOCH = 54_000 // 128


def small_config():
    config = importlib.import_module("configs.cnn3").get_config()
    config.model.conv_features = (8, 8)
    config.model.dense_features = (32,)
    config.num_epochs = 2
    config.batch_size = 128
    config.checkpoint_every_steps = 100
    config.write_report = False
    return config


def launch(*args, env=None, **popen):
    return subprocess.Popen(
        [sys.executable, "launch.py", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
        **popen,
    )


def final_state(workdir, which="latest"):
    """The state of a workdir's checkpoint, restored through the eval path's template."""
    config = train.load_workdir_config(str(workdir))
    manager = checkpointing.create_manager(str(workdir), create=False)
    _, template = train.create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch=1)
    state, progress = checkpointing.restore(manager, checkpointing.select_step(manager, which), template)
    return state, progress


def assert_states_bitwise_equal(a, b):
    leaves_a = jax.tree_util.tree_leaves_with_path((a.step, a.params, a.batch_stats, a.opt_state))
    leaves_b = jax.tree_util.tree_leaves((b.step, b.params, b.batch_stats, b.opt_state))
    assert len(leaves_a) == len(leaves_b)
    for (path, x), y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The small config trained start to finish in-process (the reference)."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    results = train.train_and_evaluate(small_config(), str(workdir))
    return workdir, results


def cnn3_args(workdir):
    return ["--config=configs/cnn3.py", *SMALL, f"--workdir={workdir}"]


def test_kill_9_mid_epoch_then_resume_is_bitwise_identical(uninterrupted, tmp_path):
    ref_dir, ref_results = uninterrupted
    ckpt_dir = tmp_path / "checkpoints"
    proc = launch(*cnn3_args(tmp_path))
    deadline = time.time() + 240
    # Kill as soon as a mid-epoch checkpoint is on disk: the run is then mid-epoch 1.
    while time.time() < deadline and proc.poll() is None:
        if ckpt_dir.is_dir() and any(d.isdigit() and int(d) >= 200 for d in os.listdir(ckpt_dir)):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read()
    saved = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
    assert saved and max(saved) < 2 * STEPS_PER_EPOCH
    assert not (tmp_path / "results.json").exists()

    resumed = launch(*cnn3_args(tmp_path))
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "resumed from the checkpoint at step" in out
    assert_states_bitwise_equal(final_state(tmp_path)[0], final_state(ref_dir)[0])
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    assert results["test"] == ref_results["test"]
    with open(tmp_path / "metrics.jsonl") as f:
        assert [json.loads(line)["epoch"] for line in f] == [1, 2]


def test_sigterm_saves_and_exits_zero_then_resumes(uninterrupted, tmp_path):
    ref_dir, _ = uninterrupted
    proc = launch(*cnn3_args(tmp_path))
    for line in proc.stdout:  # Wait until training has started.
        if line.startswith("compiled the train step"):
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    caught = [line for line in out.splitlines() if line.startswith("caught SIGTERM")]
    assert len(caught) == 1, out
    step = int(caught[0].split("at step ")[1].split()[0])
    assert 0 < step < 2 * STEPS_PER_EPOCH
    manager = checkpointing.create_manager(str(tmp_path), create=False)
    assert manager.latest_step() == step

    resumed = launch(*cnn3_args(tmp_path))
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert f"resumed from the checkpoint at step {step}" in out
    assert_states_bitwise_equal(final_state(tmp_path)[0], final_state(ref_dir)[0])


def test_eval_mode_reproduces_the_final_numbers(uninterrupted):
    ref_dir, ref_results = uninterrupted
    report = train.evaluate_checkpoint(str(ref_dir), "latest")
    assert report["step"] == ref_results["step"] == 2 * STEPS_PER_EPOCH
    assert report["test"] == ref_results["test"]
    assert report["validation"]["accuracy"] == ref_results["validation"]["accuracy"]
    assert report["validation"]["loss"] == pytest.approx(ref_results["validation"]["loss"], rel=1e-12)
    with open(ref_dir / f"eval_{report['step']}.json") as f:
        assert json.load(f)["test"]["confusion_matrix"] == ref_results["test"]["confusion_matrix"]
    best = train.evaluate_checkpoint(str(ref_dir), "best")
    with open(ref_dir / "metrics.jsonl") as f:
        best_val = max(json.loads(line)["validation_accuracy"] for line in f)
    assert best["validation"]["accuracy"] == best_val


def test_truncated_newest_checkpoint_falls_back_to_an_intact_one(uninterrupted, tmp_path):
    import shutil

    ref_dir, ref_results = uninterrupted
    shutil.copytree(ref_dir, tmp_path, dirs_exist_ok=True)
    newest = tmp_path / "checkpoints" / str(2 * STEPS_PER_EPOCH)
    older = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())[:-1]
    assert older, "the preservation policy keeps an older checkpoint"
    # Truncate the largest data file of the newest checkpoint.
    files = [os.path.join(d, f) for d, _, fs in os.walk(newest / "state") for f in fs]
    victim = max(files, key=os.path.getsize)
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    results = train.train_and_evaluate(small_config(), str(tmp_path))
    assert (tmp_path / "checkpoints" / f"corrupt_{2 * STEPS_PER_EPOCH}").is_dir()
    for step in older:
        assert (tmp_path / "checkpoints" / str(step)).is_dir() or step < max(older)
    assert results["test"] == ref_results["test"]
    assert_states_bitwise_equal(final_state(tmp_path)[0], final_state(ref_dir)[0])


def test_checkpoint_of_another_architecture_names_the_parameter(uninterrupted):
    ref_dir, _ = uninterrupted
    config = small_config()
    config.model.conv_features = (8, 16)
    with pytest.raises(
        checkpointing.CheckpointError,
        match=r"parameter params/BatchNorm_1/bias has shape \(8,\), this config's has \(16,\)",
    ):
        train.train_and_evaluate(config, str(ref_dir))


def test_nan_loss_stops_with_the_step_and_saves_nothing_non_finite(tmp_path):
    config = small_config()
    config.optimizer = "sgd"
    config.learning_rate = 1e12
    config.checkpoint_every_steps = 5
    with pytest.raises(FloatingPointError, match=r"train loss is (nan|inf) at step \d+ \(epoch 1\)"):
        train.train_and_evaluate(config, str(tmp_path))
    ckpt_dir = tmp_path / "checkpoints"
    for step in [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()]:
        manager = checkpointing.create_manager(str(tmp_path), create=False)
        _, template = train.create_train_state(config, jax.random.PRNGKey(0), 1)
        state, _ = checkpointing.restore(manager, step, template)
        assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(state.params))


def test_eval_of_missing_or_empty_workdir_is_a_clear_error(tmp_path):
    with pytest.raises(checkpointing.CheckpointError, match="does not exist"):
        train.evaluate_checkpoint(str(tmp_path / "nowhere"))
    with pytest.raises(checkpointing.CheckpointError, match=r"holds no config\.json"):
        train.evaluate_checkpoint(str(tmp_path))
    proc = launch("--mode=eval", f"--workdir={tmp_path}")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "error: " in out and "holds no config.json" in out and "Traceback" not in out


def test_eight_device_save_restores_on_one_device(tmp_path):
    proc = launch(
        "--config=configs/mlp_4x2.py",
        "--config.num_epochs=1",
        "--config.batch_size=512",
        f"--workdir={tmp_path}",
        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
    )
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "8x cpu" in out
    assert jax.device_count() == 1
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    report = train.evaluate_checkpoint(str(tmp_path), "latest")
    # Eight devices sum the eval loss in another order than one: the last bits differ.
    assert report["test"]["loss"] == pytest.approx(results["test"]["loss"], rel=1e-6)
    assert {k: v for k, v in report["test"].items() if k != "loss"} == {
        k: v for k, v in results["test"].items() if k != "loss"
    }
