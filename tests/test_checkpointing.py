"""Checkpoints: exact resume after kill -9 and SIGTERM, eval from a checkpoint, damage, NaN."""

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from conftest import load_config, read_until, rest_of_output

from fmnist_jax import checkpointing, configuration, evaluate, runtime, steps, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A small CNN (batch norm, so batch_stats must resume too) with mid-epoch checkpoints,
# trained with every augmentation drawn on the device and a moving average of the weights
# (so their draws and the average must resume too).
AUGMENTED = {"alternate_flip": True, "augment_translate": 2, "augment_cutout": 6, "ema_decay": 0.9}
SMALL = [
    *(f"--config.{k}={v}" for k, v in AUGMENTED.items()),
    "--config.model.conv_features=(8,8)",
    "--config.model.dense_features=(32,)",
    "--config.num_epochs=2",
    "--config.batch_size=128",
    "--config.checkpoint_every_steps=40",
    "--config.validation_fraction=0.8",
    "--config.write_report=False",
]
STEPS_PER_EPOCH = 12_000 // 128  # 93: the 20 % of the training split left after validation.


def small_config():
    config = load_config("cnn3")
    config.model.conv_features = (8, 8)
    config.model.dense_features = (32,)
    config.num_epochs = 2
    config.batch_size = 128
    config.checkpoint_every_steps = 40
    config.validation_fraction = 0.8
    config.write_report = False
    config.update(AUGMENTED)
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
    config = evaluate.load_workdir_config(str(workdir))
    manager = checkpointing.create_manager(str(workdir), create=False)
    _, template = steps.create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch=1)
    state, progress = checkpointing.restore(manager, checkpointing.select_step(manager, which), template)
    return state, progress


def assert_states_bitwise_equal(a, b):
    leaves_a = jax.tree_util.tree_leaves_with_path(
        (a.step, a.params, a.batch_stats, a.opt_state, a.ema_params)
    )
    leaves_b = jax.tree_util.tree_leaves((b.step, b.params, b.batch_stats, b.opt_state, b.ema_params))
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
        if ckpt_dir.is_dir() and any(d.isdigit() and int(d) >= 40 for d in os.listdir(ckpt_dir)):
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


def signal_after_first_step(workdir, sig):
    """Starts the small run, sends `sig` a second after its first step, and checks the
    preemption contract: exit 0, one 'caught' line, its step saved. Returns that step."""
    proc = launch(*cnn3_args(workdir))
    out = read_until(proc, "compiled the train step")  # Training has started.
    time.sleep(1.0)
    proc.send_signal(sig)
    out += rest_of_output(proc, timeout=120)
    assert proc.returncode == 0, out
    caught = [line for line in out.splitlines() if line.startswith(f"caught {sig.name}")]
    assert len(caught) == 1, out
    step = int(caught[0].split("at step ")[1].split()[0])
    assert 0 < step < 2 * STEPS_PER_EPOCH
    assert checkpointing.create_manager(str(workdir), create=False).latest_step() == step
    return step


def test_sigterm_saves_and_exits_zero_then_resumes(uninterrupted, tmp_path):
    ref_dir, _ = uninterrupted
    step = signal_after_first_step(tmp_path, signal.SIGTERM)

    resumed = launch(*cnn3_args(tmp_path))
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert f"resumed from the checkpoint at step {step}" in out
    assert_states_bitwise_equal(final_state(tmp_path)[0], final_state(ref_dir)[0])


def test_sigint_saves_and_exits_zero(tmp_path):
    """A first Ctrl-C is a preemption like SIGTERM: save, one line, exit 0."""
    signal_after_first_step(tmp_path, signal.SIGINT)
    assert not (tmp_path / "results.json").exists()


def test_second_sigint_stops_at_once_without_saving(tmp_path):
    """Two Ctrl-C during set-up (the handlers are in place from the start): the
    first asks for a save after the first step, the second stops before it."""
    proc = launch(*cnn3_args(tmp_path))
    deadline = time.time() + 120
    while not (tmp_path / "config.json").exists() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out = read_until(proc, "SIGINT: saving at the next step boundary")  # Acknowledged at once ...
    proc.send_signal(signal.SIGINT)  # ... and the second arrives before the first step ends.
    t = time.time()
    out += rest_of_output(proc, timeout=120)
    assert proc.returncode == 130, out
    assert time.time() - t < 15
    assert "interrupted: stopped without saving" in out and "Traceback" not in out
    assert "caught SIGINT" not in out
    assert not (tmp_path / "checkpoints").is_dir() or saved_steps(tmp_path) == []


def test_preemption_guard_turns_one_sigint_into_a_flag_and_the_second_into_an_interrupt(monkeypatch):
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: reported.append(type(info.exc_value)))
    before = signal.getsignal(signal.SIGINT)  # Ignored, where the tests run in the background.
    with runtime.PreemptionGuard() as guard:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # Python runs the handler at the next bytecode.
        assert guard.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
        # Also a flag the loop checks: Python drops exceptions raised inside gc callbacks
        # and reports them as "Exception ignored" tracebacks, which the guard silences.
        with pytest.raises(KeyboardInterrupt):
            guard.check()
        for error in (KeyboardInterrupt(), ValueError("other")):
            sys.unraisablehook(SimpleNamespace(exc_type=type(error), exc_value=error, exc_traceback=None))
    assert reported == [ValueError]  # Only the other one reached the previous hook.
    assert signal.getsignal(signal.SIGINT) is before  # The previous handler is back.
    assert sys.unraisablehook is not guard._unraisable


def test_eval_mode_reproduces_the_final_numbers(uninterrupted):
    ref_dir, ref_results = uninterrupted
    report = evaluate.evaluate_checkpoint(str(ref_dir), "latest")
    assert report["step"] == ref_results["step"] == 2 * STEPS_PER_EPOCH
    assert report["test"] == ref_results["test"]
    assert report["validation"]["accuracy"] == ref_results["validation"]["accuracy"]
    assert report["validation"]["loss"] == pytest.approx(ref_results["validation"]["loss"], rel=1e-12)
    with open(ref_dir / f"eval_{report['step']}.json") as f:
        assert json.load(f)["test"]["confusion_matrix"] == ref_results["test"]["confusion_matrix"]
    best = evaluate.evaluate_checkpoint(str(ref_dir), "best")
    with open(ref_dir / "metrics.jsonl") as f:
        best_val = max(json.loads(line)["validation_accuracy"] for line in f)
    assert best["validation"]["accuracy"] == best_val


def test_truncated_newest_checkpoint_falls_back_to_an_intact_one(uninterrupted, tmp_path, capsys):
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
    capsys.readouterr()
    results = train.train_and_evaluate(small_config(), str(tmp_path))
    out = capsys.readouterr().out
    # It resumed from the newest intact checkpoint (not from scratch), trained the rest.
    assert f"warning: checkpoint {2 * STEPS_PER_EPOCH} is unreadable" in out
    assert f"resumed from the checkpoint at step {max(older)} " in out
    assert (tmp_path / "checkpoints" / f"corrupt_{2 * STEPS_PER_EPOCH}").is_dir()
    for step in older:
        assert (tmp_path / "checkpoints" / str(step)).is_dir() or step < max(older)
    assert results["test"] == ref_results["test"]
    assert_states_bitwise_equal(final_state(tmp_path)[0], final_state(ref_dir)[0])


def test_checkpoint_of_another_architecture_names_the_parameter(uninterrupted, tmp_path):
    import shutil

    ref_dir, _ = uninterrupted
    shutil.copytree(ref_dir / "checkpoints", tmp_path / "checkpoints")  # Without its config.json.
    config = small_config()
    config.model.conv_features = (8, 16)
    with pytest.raises(
        checkpointing.CheckpointError,
        match=r"parameter params/BatchNorm_1/bias has shape \(8,\), this config's has \(16,\)",
    ):
        train.train_and_evaluate(config, str(tmp_path))
    # With the run's config.json the config check speaks first, naming the field.
    with pytest.raises(configuration.ConfigError, match=r"model\.conv_features: \[8, 8\] -> \[8, 16\]"):
        train.train_and_evaluate(config, str(ref_dir))


def test_a_workdir_is_resumed_only_by_its_own_experiment(tmp_path):
    """A changed learning rate is refused with both values; a changed report setting is
    not; more epochs of a constant-rate run are refused unless allowed, and then end
    where a run of that length from scratch does."""
    one_epoch = tiny_mlp_config(num_epochs=1, schedule="constant")
    train.train_and_evaluate(one_epoch, str(tmp_path / "run"))
    other_rate = tiny_mlp_config(num_epochs=1, schedule="constant", learning_rate=0.002)
    with pytest.raises(
        configuration.ConfigError, match=r"another config \(learning_rate: 0\.001 -> 0\.002\).*new --workdir"
    ):
        train.train_and_evaluate(other_rate, str(tmp_path / "run"))
    report_on = tiny_mlp_config(num_epochs=1, schedule="constant", write_report=True, eval_batch_size=500)
    assert train.train_and_evaluate(report_on, str(tmp_path / "run"))["step"] == 18
    longer = tiny_mlp_config(num_epochs=2, schedule="constant")
    with pytest.raises(
        configuration.ConfigError, match=r"num_epochs: 1 -> 2.*allow_config_change=num_epochs"
    ):
        train.train_and_evaluate(longer, str(tmp_path / "run"))
    longer.allow_config_change = "num_epochs"
    continued = train.train_and_evaluate(longer, str(tmp_path / "run"))
    fresh = train.train_and_evaluate(
        tiny_mlp_config(num_epochs=2, schedule="constant"), str(tmp_path / "fresh")
    )
    assert continued["step"] == 36 and continued["test"] == fresh["test"]
    cosine = tiny_mlp_config(
        num_epochs=3, allow_config_change="num_epochs"
    )  # Its rate depends on the length.
    with pytest.raises(configuration.ConfigError, match=r"only num_epochs .* schedule in"):
        train.train_and_evaluate(cosine, str(tmp_path / "run"))


def test_changed_fields_lists_nested_and_missing_fields():
    saved = {"learning_rate": 0.001, "model": {"name": "cnn", "conv_features": [8, 8]}, "old": 1}
    current = {"learning_rate": 0.001, "model": {"name": "cnn", "conv_features": [8, 16]}, "new": 2}
    assert configuration.changed_fields(saved, current) == {
        "model.conv_features": ([8, 8], [8, 16]),
        "new": (None, 2),
        "old": (1, None),
    }


def tiny_mlp_config(**overrides):
    """mlp_4x2 on 600 training images: 18 steps of 32 per epoch."""
    config = load_config("mlp_4x2")
    config.update({"validation_fraction": 0.99, "num_epochs": 2, "write_report": False, **overrides})
    return config


def saved_steps(workdir):
    return sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())


def test_nan_loss_stops_with_the_step_and_keeps_the_finite_checkpoints_before_it(tmp_path):
    """SGD at 1e36 on raw pixels: the first step's parameters are huge but finite and
    are saved (a checkpoint every step); a later step's loss is not finite, and the
    run stops naming it, after finishing the save in flight (nothing half-written)."""
    config = tiny_mlp_config(
        optimizer="sgd", learning_rate=1e36, normalize=False, checkpoint_every_steps=1, steps_per_dispatch=1
    )
    with pytest.raises(FloatingPointError, match=r"train loss is (nan|inf) at step \d+ \(epoch 1\)") as e:
        train.train_and_evaluate(config, str(tmp_path))
    bad_step = int(str(e.value).split("at step ")[1].split()[0])
    assert bad_step >= 2
    assert saved_steps(tmp_path) and max(saved_steps(tmp_path)) == bad_step - 1
    assert [d for d in os.listdir(tmp_path / "checkpoints") if not d.isdigit()] == []
    for step in saved_steps(tmp_path):
        state, _ = final_state(tmp_path, str(step))
        assert int(state.step) == step
        assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(state.params))
        assert max(np.abs(x).max() for x in jax.tree_util.tree_leaves(state.params)) > 1e30


def test_non_finite_parameters_are_never_saved(tmp_path):
    """SGD at 1e38 on raw pixels: step 1's loss is finite but its update overflows
    the parameters to inf. The checkpoint due after step 1 is refused."""
    config = tiny_mlp_config(
        optimizer="sgd", learning_rate=1e38, normalize=False, checkpoint_every_steps=1, steps_per_dispatch=1
    )
    with pytest.raises(FloatingPointError, match=r"parameters are not finite at step 1; not saving them"):
        train.train_and_evaluate(config, str(tmp_path))
    assert saved_steps(tmp_path) == []


def test_best_checkpoint_is_the_best_validation_epoch_not_the_latest(tmp_path):
    """The rate grows 10x per epoch from 0.01: validation accuracy rises, then the
    network breaks (rates 1 and 10). `best` must be the best epoch's checkpoint, and
    `--checkpoint=STEP` the checkpoint of that step."""
    config = tiny_mlp_config(num_epochs=4, schedule="exponential", epochs_per_decade=1.0, learning_rate=0.01)
    train.train_and_evaluate(config, str(tmp_path))
    with open(tmp_path / "metrics.jsonl") as f:
        accuracy = {r["epoch"] * 18: r["validation_accuracy"] for r in map(json.loads, f)}
    best_step = max(accuracy, key=accuracy.get)
    assert best_step < 4 * 18 and accuracy[best_step] > 1.5 * accuracy[4 * 18]
    assert saved_steps(tmp_path) == sorted({best_step, 3 * 18, 4 * 18})
    best = evaluate.evaluate_checkpoint(str(tmp_path), "best")
    assert best["step"] == best_step and best["validation"]["accuracy"] == accuracy[best_step]
    third = evaluate.evaluate_checkpoint(str(tmp_path), str(3 * 18))
    assert third["step"] == 3 * 18 and third["validation"]["accuracy"] == accuracy[3 * 18]
    assert (tmp_path / f"eval_{best_step}.json").is_file() and (tmp_path / "eval_54.json").is_file()
    with pytest.raises(checkpointing.CheckpointError, match=r"--checkpoint='5': expected .* saved steps"):
        evaluate.evaluate_checkpoint(str(tmp_path), "5")


def test_checkpoint_every_epochs_saves_those_epochs_and_the_last(tmp_path, monkeypatch):
    config = tiny_mlp_config(num_epochs=5, checkpoint_every_epochs=2)
    saves = []
    original = checkpointing.save

    def recording_save(manager, state, progress, validation_accuracy=checkpointing.NOT_EVALUATED):
        saves.append(int(state.step))
        original(manager, state, progress, validation_accuracy)

    monkeypatch.setattr(checkpointing, "save", recording_save)
    train.train_and_evaluate(config, str(tmp_path))
    assert saves == [2 * 18, 4 * 18, 5 * 18]
    assert set(saved_steps(tmp_path)) <= set(saves)


def test_eval_of_missing_or_empty_workdir_is_a_clear_error(tmp_path):
    with pytest.raises(checkpointing.CheckpointError, match="does not exist"):
        evaluate.evaluate_checkpoint(str(tmp_path / "nowhere"))
    with pytest.raises(checkpointing.CheckpointError, match=r"holds no config\.json"):
        evaluate.evaluate_checkpoint(str(tmp_path))
    proc = launch("--mode=eval", f"--workdir={tmp_path}")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "error: " in out and "holds no config.json" in out and "Traceback" not in out


def test_one_device_save_restores_on_eight_devices(uninterrupted, tmp_path):
    """The reference run (one device, batch norm) evaluated by `--mode=eval` in a
    process with eight devices: its checkpoint is restored replicated over them."""
    import shutil

    ref_dir, ref_results = uninterrupted
    shutil.copytree(ref_dir, tmp_path, dirs_exist_ok=True)
    proc = launch(
        "--mode=eval",
        f"--workdir={tmp_path}",
        "--checkpoint=latest",
        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
    )
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    with open(tmp_path / f"eval_{ref_results['step']}.json") as f:
        report = json.load(f)
    assert report["machine"].startswith("8x cpu")
    assert report["test"]["loss"] == pytest.approx(ref_results["test"]["loss"], rel=1e-5)
    assert report["test"]["count"] == 10_000
    assert abs(report["test"]["accuracy"] - ref_results["test"]["accuracy"]) <= 2 / 10_000  # Near-ties.


def test_eight_device_save_restores_on_one_device(tmp_path):
    proc = launch(
        "--config=configs/mlp_4x2.py",
        "--config.num_epochs=1",
        "--config.batch_size=512",
        "--config.validation_fraction=0.8",
        f"--workdir={tmp_path}",
        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
    )
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "8x cpu" in out
    assert jax.device_count() == 1
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    report = evaluate.evaluate_checkpoint(str(tmp_path), "latest")
    # Eight devices sum the eval loss in another order than one: the last bits differ.
    assert report["test"]["loss"] == pytest.approx(results["test"]["loss"], rel=1e-6)
    assert {k: v for k, v in report["test"].items() if k != "loss"} == {
        k: v for k, v in results["test"].items() if k != "loss"
    }


def test_unwritable_workdir_is_one_line_before_training(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    workdir = tmp_path / "a_file" / "run"
    with pytest.raises(runtime.WorkdirError, match=r"workdir .*a_file/run is not writable: Not a directory"):
        train.train_and_evaluate(tiny_mlp_config(), str(workdir))
    proc = launch("--config=configs/mlp_4x2.py", f"--workdir={workdir}")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert out.strip().splitlines()[-1] == f"error: workdir {workdir} is not writable: Not a directory"
    assert "Traceback" not in out


@pytest.mark.parametrize(
    ("options", "reason"), [("ro,size=1m", "Read-only file system"), ("size=32k", "No space left on device")]
)
def test_read_only_or_full_filesystem_is_one_line_before_training(tmp_path, options, reason):
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        workdir = mount_point if options.startswith("ro") else mount_point / "run"
        with pytest.raises(runtime.WorkdirError, match=rf"workdir {workdir} is not writable: {reason}$"):
            train.train_and_evaluate(tiny_mlp_config(), str(workdir))
        assert not workdir.exists() or os.listdir(workdir) == []  # No probe file left behind.
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_failed_checkpoint_write_stops_the_run_naming_its_step(tmp_path, monkeypatch):
    """The disk fills up while the third checkpoint is saved: the run stops with the step
    whose write failed, and the checkpoints before it stay intact and restorable."""
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    original, calls = checkpointing.save, []

    def save_then_fill_the_disk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            subprocess.run(
                ["dd", "if=/dev/zero", f"of={mount_point / 'fill'}", "bs=64k"], capture_output=True
            )
        return original(*args, **kwargs)

    monkeypatch.setattr(checkpointing, "save", save_then_fill_the_disk)
    workdir = mount_point / "run"
    config = tiny_mlp_config(num_epochs=1, checkpoint_every_steps=1, steps_per_dispatch=1)
    try:
        with pytest.raises(checkpointing.CheckpointError) as e:
            train.train_and_evaluate(config, str(workdir))
        message = str(e.value)
        assert "No space left on device" in message
        failed = int(message.split("checkpoint of step ")[1].split()[0])
        kept = int(message.split("newest intact checkpoint is step ")[1].split(":")[0])
        assert failed in (2, 3) and kept == failed - 1
        os.remove(mount_point / "fill")
        state, _ = final_state(workdir, str(kept))
        assert int(state.step) == kept
    finally:  # Lazily: orbax's writer threads may still hold a file there.
        subprocess.run(["umount", "-l", str(mount_point)], check=True)
