"""The learning-rate range test (--mode=lr_find)."""

import itertools
import json

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import optax
import pytest
from conftest import load_config

from fmnist_jax import configuration, input_pipeline, lr_finder, steps


def test_sweep_rates_are_exponential_between_the_bounds():
    rates = lr_finder.sweep_rates(1e-6, 1.0, 7)
    np.testing.assert_allclose(rates, [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0], rtol=1e-12)


def test_smoothing_is_bias_corrected_and_the_rule():
    np.testing.assert_allclose(lr_finder.smooth(np.full(5, 2.0)), np.full(5, 2.0))
    rates = np.array([1e-4, 1e-3, 1e-2, 1e-1])
    assert lr_finder.suggest(rates, np.array([2.0, 1.5, 1.0, 3.0])) == pytest.approx(1e-3)


def ema(losses, beta=0.9):
    """The bias-corrected exponential moving average, written out here, not lr_finder.smooth."""
    avg, out = 0.0, []
    for i, loss in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**i))
    return np.array(out)


def replayed_losses(config, splits, rates):
    """The training loss at each step of plain Adam on the sweep's batches, the rate of step i
    being rates[i]: the loss is taken before that step's update, on that step's batch."""
    init_rng, _ = jax.random.split(jax.random.PRNGKey(config.seed))
    _, state = steps.create_train_state(config, init_rng, steps_per_epoch=1)
    adam = optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)

    @jax.jit
    def step(params, opt_state, images, labels, lr):
        def loss_fn(params):
            logits = state.apply_fn({"params": params}, images.astype(jnp.float32) / 255.0, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = adam.update(grads, opt_state)
        params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
        return params, opt_state, loss

    params, opt_state, losses = state.params, adam.init(state.params), []
    batches = input_pipeline.train_batches(splits["train"], config.batch_size, config.seed, epoch=1)
    for lr, (images, labels) in zip(rates, itertools.islice(batches, len(rates)), strict=True):
        params, opt_state, loss = step(params, opt_state, images, labels, jnp.float32(lr))
        losses.append(float(loss))
    return np.array(losses)


def test_range_test_on_real_data(tmp_path, splits):
    config = load_config("mlp_256")
    config.lr_find_steps = 80
    config.lr_find_min = 1e-5
    config.lr_find_max = 100.0  # Far past divergence for Adam: the sweep must stop early.
    assert (config.validation_fraction, config.split_seed) == (0.1, 0)  # The `splits` fixture's.
    result = lr_finder.find_learning_rate(config, str(tmp_path))
    n = result["steps_run"]
    rates, losses = np.array(result["learning_rates"]), np.array(result["losses"])
    assert len(rates) == len(losses) == len(result["smoothed_losses"]) == n
    np.testing.assert_allclose(rates, np.geomspace(1e-5, 100.0, 80)[:n], rtol=1e-12)
    assert np.all(np.isfinite(losses))

    # The 4x divergence stop: it fired, at the first step whose smoothed loss exceeds four
    # times the minimum so far, and not before.
    assert 10 <= n < 80
    smoothed = ema(losses)
    np.testing.assert_allclose(result["smoothed_losses"], smoothed, rtol=1e-12)
    running_min = np.minimum.accumulate(smoothed)
    assert smoothed[-1] > 4 * running_min[-1]
    assert np.all(smoothed[:-1] <= 4 * running_min[:-1])
    assert min(smoothed) < smoothed[0]  # Some rate helps.

    # The rule: the rate at the minimum of the smoothed loss, over 10.
    i = int(np.argmin(smoothed))
    assert 0 < i < n - 1  # Neither end of the sweep: the rule is tested, not a boundary.
    assert result["suggested_learning_rate"] == pytest.approx(rates[i] / 10, rel=1e-12)
    assert result["rate_at_minimum"] == pytest.approx(rates[i], rel=1e-12)

    # The losses are the training losses at the recorded rates: the first (before any update)
    # exactly a fresh model's on the first batch, the next ones those of Adam stepped at
    # rates[0], rates[1], ... (the early steps, before divergence amplifies rounding).
    replayed = replayed_losses(config, splits, rates[:20])
    assert losses[0] == pytest.approx(replayed[0], rel=1e-6)
    np.testing.assert_allclose(losses[:20], replayed, rtol=1e-4)

    with open(tmp_path / "lr_find.json") as f:
        assert json.load(f)["suggested_learning_rate"] == result["suggested_learning_rate"]
    image = matplotlib.image.imread(tmp_path / "lr_find.png")
    assert image.shape[:2] == (450, 700)


def test_bad_sweep_bounds_name_the_field():
    config = load_config("mlp_256")
    config.lr_find_max = 1e-7
    with pytest.raises(configuration.ConfigError, match=r"config\.lr_find_max=1e-07: must be > lr_find_min"):
        configuration.validate_config(config)
