"""Train and eval steps, schedules, and a short real run."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest
from conftest import convolution_input_dtypes, load_config, operand_dtypes

from fmnist_jax import (
    CLASS_NAMES,
    checkpointing,
    configuration,
    evaluate,
    input_pipeline,
    monitor,
    optim,
    steps,
    train,
)
from fmnist_jax import results as results_lib


def test_train_step_lowers_loss_on_a_fixed_batch(splits):
    config = load_config("cnn2_dropout")
    config.model.conv_features = (8, 16)
    config.model.dense_features = (32,)
    config.model.conv_dropout = (0.0, 0.0)
    config.model.dense_dropout = 0.0
    config.learning_rate = 3e-3
    _, state = steps.create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch=100)
    images, labels = splits["train"].images[:64], splits["train"].labels[:64]
    eval_batch = (images, labels, np.ones(64, np.float32))
    step = jax.jit(steps.train_step)
    eval_fn = jax.jit(steps.eval_step)
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


def test_batch_norm_statistics_move_by_one_minus_momentum_of_the_batch_moments(splits):
    """After one step from zero mean / unit variance, the first BN layer's running
    statistics are 0.99 * old + 0.01 * the batch moments of the first conv's output,
    computed here with lax from the initial kernel (momentum 0.99, as in Keras)."""
    config = load_config("cnn4")
    config.model.conv_features = (4, 4, 4, 4)
    _, state = steps.create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch=10)
    images = splits["train"].images[:32]
    batch = (images, splits["train"].labels[:32])
    conv = state.params["Conv_0"]
    x = jnp.asarray(images, jnp.float32) / 255.0
    y = jax.lax.conv_general_dilated(
        x, conv["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    y = np.asarray(y + conv["bias"], np.float64)
    batch_mean, batch_var = y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2))
    state, _ = jax.jit(steps.train_step)(state, batch, jax.random.PRNGKey(1))
    stats = state.batch_stats["BatchNorm_0"]
    np.testing.assert_allclose(stats["mean"], 0.01 * batch_mean, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(stats["var"], 0.99 + 0.01 * batch_var, rtol=1e-5)
    assert np.all(np.abs(0.01 * batch_mean) > 1e-5)  # The expectation is not trivially zero.


def _schedule(**overrides):
    config = load_config("mlp_256")
    config.update(overrides)
    return optim.learning_rate_schedule(config, steps_per_epoch=10)


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


def test_warmup_linear_schedule_rises_then_falls_in_straight_lines():
    sched = _schedule(schedule="warmup_linear", learning_rate=0.4, num_epochs=5, warmup_epochs=1.0)
    expected = [0.4 * s / 10 if s <= 10 else 0.4 * (50 - s) / 40 for s in range(51)]
    np.testing.assert_allclose([float(sched(s)) for s in range(51)], expected, rtol=1e-5, atol=1e-8)
    floor = _schedule(
        schedule="warmup_linear", learning_rate=0.4, num_epochs=5, warmup_epochs=1.0, final_lr_fraction=0.25
    )
    np.testing.assert_allclose([float(floor(s)) for s in (10, 30, 50)], [0.4, 0.25, 0.1], rtol=1e-5)


def test_one_cycle_schedule_peaks_after_its_rising_phase():
    sched = _schedule(schedule="one_cycle", learning_rate=1e-2, num_epochs=10, warmup_epochs=3.0)
    rates = np.array([sched(s) for s in range(101)])
    assert int(np.argmax(rates)) == 30
    np.testing.assert_allclose(rates[30], 1e-2, rtol=1e-5)
    assert rates[0] < 1e-3 and rates[100] < 1e-5


def test_constant_schedule():
    sched = _schedule(schedule="constant", learning_rate=3e-3)
    assert [float(sched(s)) for s in (0, 12345)] == pytest.approx([3e-3, 3e-3])


# Two gradients and the parameters they apply to: signs and magnitudes differ per element.
G1 = np.array([0.5, -2.0, 1e-3, 0.0], np.float32)
G2 = np.array([-0.25, -1.0, 3.0, 2.0], np.float32)
PARAMS = np.array([1.0, -3.0, 0.25, 2.0], np.float32)
LR = 0.1


def _two_updates(**overrides):
    """The configured optimizer's updates for gradients G1 then G2 (constant rate LR)."""
    config = load_config("mlp_4x2")
    config.update(schedule="constant", learning_rate=LR, **overrides)
    tx = optim.create_optimizer(config, steps_per_epoch=10)
    params = {"w": jnp.asarray(PARAMS)}
    opt_state = tx.init(params)
    updates = []
    for g in (G1, G2):
        u, opt_state = tx.update({"w": jnp.asarray(g)}, opt_state, params)
        updates.append(np.asarray(u["w"], np.float64))
    return updates, config


def _adam_direction(b1, b2, eps):
    """Adam's bias-corrected m / (sqrt(v) + eps) after G1 and after G1, G2."""
    g1, g2 = G1.astype(np.float64), G2.astype(np.float64)
    first = g1 / (np.abs(g1) + eps)  # m-hat = g, v-hat = g**2 after one step.
    m = (b1 * (1 - b1) * g1 + (1 - b1) * g2) / (1 - b1**2)
    v = (b2 * (1 - b2) * g1**2 + (1 - b2) * g2**2) / (1 - b2**2)
    return first, m / (np.sqrt(v) + eps)


def test_adam_updates_are_adams_formula():
    (u1, u2), config = _two_updates(optimizer="adam", adam_b1=0.8, adam_b2=0.99)
    d1, d2 = _adam_direction(0.8, 0.99, config.adam_eps)
    np.testing.assert_allclose(u1, -LR * d1, rtol=1e-5)
    np.testing.assert_allclose(u2, -LR * d2, rtol=1e-5)


def test_adamw_adds_decoupled_weight_decay():
    (u1, u2), config = _two_updates(optimizer="adamw", weight_decay=0.5, adam_b1=0.8, adam_b2=0.99)
    d1, d2 = _adam_direction(0.8, 0.99, config.adam_eps)
    np.testing.assert_allclose(u1, -LR * (d1 + 0.5 * PARAMS), rtol=1e-5)
    np.testing.assert_allclose(u2, -LR * (d2 + 0.5 * PARAMS), rtol=1e-5)


def test_sgd_momentum_and_nesterov_updates():
    (u1, u2), _ = _two_updates(optimizer="sgd", momentum=0.5, nesterov=False)
    np.testing.assert_allclose(u1, -LR * G1, rtol=1e-6)
    np.testing.assert_allclose(u2, -LR * (G2 + 0.5 * G1), rtol=1e-6)
    (n1, n2), _ = _two_updates(optimizer="sgd", momentum=0.5, nesterov=True)
    # Nesterov looks ahead along the velocity: g + m * (g + m * previous velocity).
    np.testing.assert_allclose(n1, -LR * (G1 + 0.5 * G1), rtol=1e-6)
    np.testing.assert_allclose(n2, -LR * (G2 + 0.5 * (G2 + 0.5 * G1)), rtol=1e-6)


def test_sgd_weight_decay_is_decoupled_from_momentum():
    """The decay is added after the momentum: it does not accumulate in the velocity."""
    (u1, u2), _ = _two_updates(optimizer="sgd", momentum=0.5, nesterov=False, weight_decay=0.2)
    np.testing.assert_allclose(u1, -LR * (G1 + 0.2 * PARAMS), rtol=1e-6)
    np.testing.assert_allclose(u2, -LR * (G2 + 0.5 * G1 + 0.2 * PARAMS), rtol=1e-6)
    (n1, n2), _ = _two_updates(optimizer="sgd", momentum=0.5, nesterov=True, weight_decay=0.2)
    np.testing.assert_allclose(n1, -LR * (1.5 * G1 + 0.2 * PARAMS), rtol=1e-6)
    np.testing.assert_allclose(n2, -LR * (G2 + 0.5 * (G2 + 0.5 * G1) + 0.2 * PARAMS), rtol=1e-6)


def test_moving_average_of_the_weights_follows_its_formula_and_is_what_evaluation_uses(splits):
    """Two steps with ema_decay 0.8: the average is p0 -> d1 p0 + (1 - d1) p1 ->
    d2 ema1 + (1 - d2) p2, with d_t = min(0.8, (1 + t) / (10 + t)); eval_step scores it."""
    config = load_config("mlp_4x2")
    config.ema_decay = 0.8
    _, state = steps.create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch=10)
    images, labels = splits["train"].images[:64], splits["train"].labels[:64]
    step = jax.jit(steps.configured_train_step(config))
    kernel = lambda tree: np.asarray(tree["Dense_0"]["kernel"], np.float64)  # noqa: E731
    ema, params = kernel(state.ema_params), [kernel(state.params)]
    np.testing.assert_array_equal(ema, params[0])
    for t in (1, 2):
        state, _ = step(state, (images, labels), jax.random.PRNGKey(t))
        params.append(kernel(state.params))
        d = min(0.8, (1 + t) / (10 + t))
        ema = d * ema + (1 - d) * params[-1]
        np.testing.assert_allclose(kernel(state.ema_params), ema, rtol=1e-5, atol=1e-7)
    assert np.max(np.abs(ema - params[-1])) > 1e-4  # The average is not the latest params.

    batch = (images, labels, np.ones(64, np.float32))
    scored = jax.jit(steps.configured_eval_step(config))(state, batch)
    as_params = jax.jit(steps.configured_eval_step(config))(state.replace(params=state.ema_params), batch)
    np.testing.assert_array_equal(np.asarray(scored["loss_sum"]), np.asarray(as_params["loss_sum"]))
    latest = jax.jit(steps.configured_eval_step(config))(state.replace(ema_params=None), batch)
    assert float(latest["loss_sum"]) != float(scored["loss_sum"])


def test_unknown_optimizer_is_refused():
    config = load_config("mlp_4x2")
    config.optimizer = "lamb"
    with pytest.raises(ValueError, match=r"config\.optimizer='lamb'"):
        optim.create_optimizer(config, steps_per_epoch=10)


def test_compute_dtype_bfloat16_reaches_the_model_of_a_training_run(splits):
    """config.compute_dtype goes through the train state's model: its layers run in
    bfloat16 while parameters, optimizer state and batch statistics stay float32."""
    config = load_config("cnn4")
    config.model.conv_features = (4, 4, 4, 4)
    config.compute_dtype = "bfloat16"
    _, state = steps.create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch=10)
    batch = (splits["train"].images[:8], splits["train"].labels[:8])
    state, metrics = jax.jit(steps.train_step)(state, batch, jax.random.PRNGKey(1))
    leaves = jax.tree_util.tree_leaves((state.params, state.opt_state, state.batch_stats))
    assert {x.dtype for x in leaves if x.ndim} == {jnp.dtype(jnp.float32)}
    assert metrics["loss"].dtype == jnp.float32
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    x = steps.preprocess(batch[0], True)
    jaxpr = jax.make_jaxpr(functools.partial(state.apply_fn, train=False))(variables, x)
    # The convolutions after the first (multiply-adds) and both dense layers.
    assert convolution_input_dtypes(jaxpr) == [("bfloat16",) * 2] * 3
    assert operand_dtypes(jaxpr, "dot_general") == [("bfloat16",) * 3] * 2


def _mlp_state(**overrides):
    """mlp_4x2 (no dropout, no batch norm: its training logits are deterministic)."""
    config = load_config("mlp_4x2")
    config.update(overrides)
    _, state = steps.create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch=10)
    return config, state


def _cross_entropy(logits, targets):
    logits = np.asarray(logits, np.float64)
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    return float(-(targets * log_probs).sum(-1).mean())


def test_label_smoothing_trains_on_smoothed_targets(splits):
    """The loss of a step with smoothing 0.2 is the cross-entropy with targets
    0.8 * one_hot + 0.02, computed here from the model's logits in float64."""
    _, state = _mlp_state()
    images, labels = splits["train"].images[:64], splits["train"].labels[:64]
    logits = state.apply_fn({"params": state.params}, jnp.asarray(images, jnp.float32) / 255.0)
    one_hot = np.eye(10)[labels]
    for smoothing in (0.0, 0.2):
        step = jax.jit(functools.partial(steps.train_step, label_smoothing=smoothing))
        _, metrics = step(state, (images, labels), jax.random.PRNGKey(1))
        expected = _cross_entropy(logits, (1 - smoothing) * one_hot + smoothing / 10)
        assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-5), smoothing


def test_normalize_false_trains_on_raw_pixels(splits):
    _, state = _mlp_state()
    images, labels = splits["train"].images[:64], splits["train"].labels[:64]
    one_hot = np.eye(10)[labels]
    for normalize, scale in ((True, 255.0), (False, 1.0)):
        logits = state.apply_fn({"params": state.params}, jnp.asarray(images, jnp.float32) / scale)
        step = jax.jit(functools.partial(steps.train_step, normalize=normalize))
        _, metrics = step(state, (images, labels), jax.random.PRNGKey(1))
        assert float(metrics["loss"]) == pytest.approx(_cross_entropy(logits, one_hot), rel=1e-5)
        out = jax.jit(functools.partial(steps.eval_step, normalize=normalize))(
            state, (images, labels, np.ones(64, np.float32))
        )
        assert float(out["loss_sum"]) / 64 == pytest.approx(_cross_entropy(logits, one_hot), rel=1e-5)


def test_augment_flip_mirrors_left_right_for_some_images(splits):
    """Left-right symmetric images are unchanged by a horizontal flip, so the step is
    the same with and without it; on real images it differs from both the plain and
    the all-mirrored batch (some images are flipped, not none and not all)."""
    _, state = _mlp_state()
    images, labels = splits["train"].images[:64], splits["train"].labels[:64]
    symmetric = np.concatenate([images[:, :, :14], images[:, :, 13::-1]], axis=2)
    assert not np.array_equal(symmetric, symmetric[:, ::-1])  # Not symmetric top-bottom.
    plain = jax.jit(steps.train_step)
    flip = jax.jit(functools.partial(steps.train_step, augment_flip=True))
    rng = jax.random.PRNGKey(1)

    def kernel(step, batch):
        return np.asarray(step(state, (batch, labels), rng)[0].params["Dense_0"]["kernel"])

    np.testing.assert_allclose(kernel(flip, symmetric), kernel(plain, symmetric), rtol=1e-6, atol=1e-9)
    flipped = kernel(flip, images)
    for other in (kernel(plain, images), kernel(plain, images[:, :, ::-1])):
        assert np.max(np.abs(flipped - other)) > 1e-4


def test_evaluation_counts_every_example_once(splits):
    config = load_config("mlp_4x2")
    _, state = steps.create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch=10)
    split = input_pipeline.Split(splits["test"].images[:1003], splits["test"].labels[:1003], np.arange(1003))
    eval_fn = jax.jit(steps.eval_step)
    padded = evaluate.evaluate(eval_fn, state, split, batch_size=100)  # 10 full + 1 padded batch
    whole = evaluate.evaluate(eval_fn, state, split, batch_size=1003)
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
    assert set(results["test"]["per_class_accuracy"]) == set(CLASS_NAMES)
    with open(tmp_path / "results.json") as f:
        assert json.load(f)["test"] == results["test"]
    with open(tmp_path / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"train_loss", "validation_accuracy", "images_per_second"} <= set(records[0])
    expected_sizes = {  # (height, width) in pixels
        "samples.png": (860, 800),
        "predictions.png": (860, 800),
        "learning_curves.png": (400, 1000),
        "confusion_matrix.png": (700, 1600),
    }
    _assert_tensorboard_reads(tmp_path / "tensorboard", records, results["step"], expected_sizes)
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
        evaluate.evaluate_checkpoint(str(tmp_path), "latest")["test"]["accuracy"]
        == results["test"]["accuracy"]
    )

    config.test_every_epoch = False
    with pytest.raises(configuration.ConfigError, match=r"stop_at_test_accuracy.*test_every_epoch"):
        train.train_and_evaluate(config, str(tmp_path / "other"))


def _assert_tensorboard_reads(logdir, records, last_step, image_sizes):
    """TensorBoard's own reader finds each epoch's scalars and the report's figures."""
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(str(logdir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    accuracy = events.Scalars("validation_accuracy")
    assert [e.value for e in accuracy] == pytest.approx([r["validation_accuracy"] for r in records])
    assert accuracy[-1].step == last_step and accuracy[0].step == last_step // 2
    assert set(events.Tags()["images"]) == {name[:-4] for name in image_sizes}
    for name, size in image_sizes.items():
        (image,) = events.Images(name[:-4])
        assert (image.height, image.width) == size and image.step == last_step
        assert image.encoded_image_string == (logdir.parent / "report" / name).read_bytes()


def test_a_training_run_never_imports_tensorflow(tmp_path):
    """Importing TensorFlow costs seconds of every launch and a run needs nothing from it
    (the data are tfds's files read without it; TensorBoard's event files are written
    without it): a whole run, report included, leaves it unimported."""
    code = (
        "import sys; from conftest import load_config; from fmnist_jax import train; "
        "c = load_config('mlp_4x2'); c.num_epochs = 1; c.validation_fraction = 0.99; "
        f"train.train_and_evaluate(c, {str(tmp_path)!r}); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'clu')))"
    )
    tests = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=os.path.dirname(tests),
        env={**os.environ, "PYTHONPATH": tests},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.splitlines()[-1] == "[]"
    assert (tmp_path / "report" / "report.html").exists() and os.listdir(tmp_path / "tensorboard")


def test_metrics_log_without_tensorboard_still_writes_jsonl(tmp_path, monkeypatch, capsys):
    # `from tensorboard.compat.proto import ...` now raises ImportError.
    monkeypatch.setitem(sys.modules, "tensorboard.compat.proto", None)
    log = monitor.MetricsLog(str(tmp_path), records=[{"epoch": 1, "loss": 0.5}])
    log.write(2, {"epoch": 2, "loss": 0.25})
    log.close()
    assert log.writer is None and "TensorBoard summaries are off" in capsys.readouterr().err
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}]
    assert not (tmp_path / "tensorboard").exists()


@pytest.mark.parametrize(
    "overrides",
    [
        {
            "optimizer": "sgd",
            "nesterov": True,
            "learning_rate": 0.01,
            "normalize": False,
            "augment_flip": True,
            "label_smoothing": 0.1,
        },
        {"optimizer": "adamw", "weight_decay": 0.1, "augment_flip": True, "label_smoothing": 0.2},
    ],
    ids=["sgd_nesterov_raw_flip_smooth", "adamw_flip_smooth"],
)
def test_training_options_reach_the_run(tmp_path, overrides):
    """A whole run (scanned on the device) with these options ends with the state a
    plain host loop of `train_step` reaches with the same options passed explicitly:
    every option goes through the run's configuration into its step."""
    config = load_config("mlp_4x2")
    config.update({"validation_fraction": 0.99, "num_epochs": 2, "write_report": False, **overrides})
    train.train_and_evaluate(config, str(tmp_path))
    manager = checkpointing.create_manager(str(tmp_path), create=False)
    _, template = steps.create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch=18)
    run_state, _ = checkpointing.restore(manager, 36, template)

    init_rng, rng = jax.random.split(jax.random.PRNGKey(config.seed))
    _, state = steps.create_train_state(config, init_rng, steps_per_epoch=18)
    kwargs = {k: config[k] for k in ("normalize", "augment_flip", "label_smoothing")}
    step = jax.jit(functools.partial(steps.train_step, **kwargs))
    split = input_pipeline.load_splits(validation_fraction=0.99)["train"]
    for epoch in (1, 2):
        for idx in input_pipeline.epoch_batch_indices(len(split), 32, config.seed, epoch):
            state, _ = step(state, (split.images[idx], split.labels[idx]), rng)
    assert int(run_state.step) == int(state.step) == 36
    for a, b in zip(
        jax.tree_util.tree_leaves(run_state.params), jax.tree_util.tree_leaves(state.params), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
