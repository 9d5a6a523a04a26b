"""Train and eval steps, schedules, and a short real run."""

import importlib
import json
import os

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from fmnist_jax import configuration, input_pipeline, train
from fmnist_jax import results as results_lib


def load_config(name):
    return importlib.import_module(f"configs.{name}").get_config()


def test_train_step_lowers_loss_on_a_fixed_batch(splits):
    config = load_config("cnn2_dropout")
    config.model.conv_features = (8, 16)
    config.model.dense_features = (32,)
    config.model.conv_dropout = (0.0, 0.0)
    config.model.dense_dropout = 0.0
    config.learning_rate = 3e-3
    _, state = train.create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch=100)
    images, labels = splits["train"].images[:64], splits["train"].labels[:64]
    eval_batch = (images, labels, np.ones(64, np.float32))
    step = jax.jit(train.train_step)
    eval_fn = jax.jit(train.eval_step)
    rng = jax.random.PRNGKey(1)

    def loss(state):  # Deterministic loss (no dropout) on the fixed batch.
        return float(eval_fn(state, eval_batch)["loss_sum"]) / 64

    initial = loss(state)
    state, _ = step(state, (images, labels), rng)
    assert loss(state) < initial
    for _ in range(19):
        state, _ = step(state, (images, labels), rng)
    assert int(state.step) == 20
    assert loss(state) < 0.5 * initial


def test_batch_norm_statistics_are_updated(splits):
    config = load_config("cnn4")
    config.model.conv_features = (4, 4, 4, 4)
    _, state = train.create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch=10)
    before = jax.tree_util.tree_map(np.asarray, state.batch_stats)
    batch = (splits["train"].images[:32], splits["train"].labels[:32])
    state, _ = jax.jit(train.train_step)(state, batch, jax.random.PRNGKey(1))
    mean_before = before["BatchNorm_0"]["mean"]
    mean_after = np.asarray(state.batch_stats["BatchNorm_0"]["mean"])
    assert np.all(mean_before == 0.0) and np.any(mean_after != 0.0)


def _schedule(**overrides):
    config = load_config("mlp_256")
    config.update(overrides)
    return train.learning_rate_schedule(config, steps_per_epoch=10)


def test_exponential_schedule_is_seed_001s():
    sched = _schedule(schedule="exponential", learning_rate=1e-3, epochs_per_decade=20.0, num_epochs=40)
    for epoch in (0, 1, 20, 39):
        for step in (epoch * 10, epoch * 10 + 9):
            np.testing.assert_allclose(sched(step), 1e-3 * 10 ** (epoch / 20), rtol=1e-5)


def test_cosine_and_warmup_cosine_schedules():
    cos = _schedule(schedule="cosine", learning_rate=1e-2, num_epochs=5, final_lr_fraction=0.1)
    np.testing.assert_allclose(cos(0), 1e-2, rtol=1e-6)
    np.testing.assert_allclose(cos(25), 1e-2 * (0.1 + 0.9 * 0.5), rtol=1e-5)
    np.testing.assert_allclose(cos(50), 1e-3, rtol=1e-5)
    warm = _schedule(schedule="warmup_cosine", learning_rate=1e-2, num_epochs=5, warmup_epochs=1.0)
    np.testing.assert_allclose(warm(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(warm(5), 5e-3, rtol=1e-5)
    np.testing.assert_allclose(warm(10), 1e-2, rtol=1e-5)
    np.testing.assert_allclose(warm(50), 0.0, atol=1e-9)


def test_warmup_longer_than_the_run_is_half_the_run():
    sched = _schedule(schedule="warmup_cosine", learning_rate=1e-2, num_epochs=1, warmup_epochs=1.0)
    rates = np.array([sched(s) for s in range(11)])
    assert int(np.argmax(rates)) == 5
    np.testing.assert_allclose(rates[5], 1e-2, rtol=1e-5)
    one_cycle = _schedule(schedule="one_cycle", learning_rate=1e-2, num_epochs=1, warmup_epochs=3.0)
    assert int(np.argmax([one_cycle(s) for s in range(11)])) == 5


def test_one_cycle_schedule_peaks_after_its_rising_phase():
    sched = _schedule(schedule="one_cycle", learning_rate=1e-2, num_epochs=10, warmup_epochs=3.0)
    rates = np.array([sched(s) for s in range(101)])
    assert int(np.argmax(rates)) == 30
    np.testing.assert_allclose(rates[30], 1e-2, rtol=1e-5)
    assert rates[0] < 1e-3 and rates[100] < 1e-5


def test_constant_schedule_and_optimizers_step():
    assert float(_schedule(schedule="constant", learning_rate=3e-3)(12345)) == pytest.approx(3e-3)
    for name in ("adam", "adamw", "sgd"):
        config = load_config("mlp_4x2")
        config.optimizer = name
        tx = train.create_optimizer(config, steps_per_epoch=10)
        params = {"w": jnp.ones(3)}
        updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
        assert float(updates["w"][0]) < 0.0


def test_evaluation_counts_every_example_once(splits):
    config = load_config("mlp_4x2")
    _, state = train.create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch=10)
    split = input_pipeline.Split(splits["test"].images[:1003], splits["test"].labels[:1003], np.arange(1003))
    eval_fn = jax.jit(train.eval_step)
    padded = train.evaluate(eval_fn, state, split, batch_size=100)  # 10 full + 1 padded batch
    whole = train.evaluate(eval_fn, state, split, batch_size=1003)
    assert padded["count"] == whole["count"] == 1003
    assert padded["confusion_matrix"] == whole["confusion_matrix"]
    np.testing.assert_allclose(padded["loss"], whole["loss"], rtol=1e-5)
    expected_per_class = np.bincount(split.labels, minlength=10)
    np.testing.assert_array_equal(np.sum(padded["confusion_matrix"], axis=1), expected_per_class)


def test_short_real_mlp_256_run(tmp_path):
    """Two epochs of mlp_256 on the real data reach 0.85 test accuracy."""
    config = load_config("mlp_256")
    config.num_epochs = 2
    config.batch_size = 128
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results["test"]["count"] == 10_000
    assert results["test"]["accuracy"] >= 0.85
    assert set(results["test"]["per_class_accuracy"]) == set(train.CLASS_NAMES)
    with open(tmp_path / "results.json") as f:
        assert json.load(f)["test"] == results["test"]
    with open(tmp_path / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"train_loss", "validation_accuracy", "images_per_second"} <= set(records[0])
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tensorboard"))
    expected_sizes = {  # (height, width) in pixels
        "samples.png": (860, 800),
        "predictions.png": (860, 800),
        "learning_curves.png": (400, 1000),
        "confusion_matrix.png": (700, 1600),
    }
    for name, size in expected_sizes.items():
        image = matplotlib.image.imread(tmp_path / "report" / name)
        assert image.shape[:2] == size, name
        assert image[..., :3].std() > 0.05, name  # Not blank.
    page = (tmp_path / "report" / "report.html").read_text()
    assert all(f'src="{name}"' in page for name in expected_sizes)
    assert f"{results['test']['accuracy']:.4f}" in page
    summary = (tmp_path / "report" / "model_summary.txt").read_text()
    assert "203,530" in summary and "MFLOP" in summary and "\x1b" not in summary
    row = results_lib.markdown_table([str(tmp_path)]).splitlines()[2]
    assert row.startswith(f"| `mlp_256` | 203,530 | 0.8777 | {results['test']['accuracy']:.4f} | 2 | 128 |")


def test_stop_at_test_accuracy_ends_the_run_at_the_first_epoch_that_reaches_it(tmp_path):
    """Time-to-accuracy runs: test accuracy in every epoch's record, then an early stop
    that still leaves a finished run (results, checkpoint) behind."""
    config = load_config("mlp_4x2")
    config.num_epochs = 4
    config.batch_size = 512
    config.write_report = False
    config.test_every_epoch = True
    config.stop_at_test_accuracy = 0.45  # mlp_4x2 passes it within 2-3 epochs at this batch.
    results = train.train_and_evaluate(config, str(tmp_path))
    with open(tmp_path / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    accuracies = [r["test_accuracy"] for r in records]
    assert results["stopped_at_epoch"] == len(records) < config.num_epochs
    assert all(a < 0.45 for a in accuracies[:-1]) and accuracies[-1] >= 0.45
    assert accuracies[-1] == results["test"]["accuracy"]  # The same state, evaluated twice.
    assert 0 < results["first_step_seconds"] < records[0]["seconds_since_process_start"]
    assert results["step"] == len(records) * (54_000 // 512)
    assert (
        train.evaluate_checkpoint(str(tmp_path), "latest")["test"]["accuracy"] == results["test"]["accuracy"]
    )

    config.test_every_epoch = False
    with pytest.raises(configuration.ConfigError, match=r"stop_at_test_accuracy.*test_every_epoch"):
        train.train_and_evaluate(config, str(tmp_path / "other"))


def test_metrics_log_without_tensorboard_still_writes_jsonl(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "clu", None)  # `from clu import ...` now raises ImportError.
    log = train.MetricsLog(str(tmp_path), records=[{"epoch": 1, "loss": 0.5}])
    log.write(2, {"epoch": 2, "loss": 0.25})
    log.close()
    assert log.writer is None and "TensorBoard summaries are off" in capsys.readouterr().err
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}]
    assert not (tmp_path / "tensorboard").exists()
