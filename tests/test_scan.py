"""The scanned training path (data on the device, steps in one lax.scan) against
step-by-step dispatch: the same steps must give the same state, bit for bit."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from fmnist_jax import parallel, steps, train


def _tiny_cnn():
    config = load_config("cnn4")  # Batch norm and dropout: the hardest case.
    config.model.conv_features = (4, 8)
    config.model.dense_features = (16,)
    config.batch_size = 16
    return config


def _state_leaves(state):
    return jax.tree_util.tree_leaves((state.step, state.params, state.batch_stats, state.opt_state))


def _assert_same_state(a, b):
    for x, y in zip(_state_leaves(a), _state_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _run_chunks(config, splits, sizes):
    """Trains sum(sizes) steps as one dispatch per entry of `sizes`."""
    par = parallel.DataParallel("jit")
    rng = jax.random.PRNGKey(3)
    _, state = steps.create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch=100)
    split = splits["train"]
    data = par.put_dataset((split.images[:512], split.labels[:512]))
    step = steps.configured_train_step(config, par.axis_name)
    order = np.random.default_rng(0).permutation(512)[: sum(sizes) * config.batch_size]
    order = order.reshape(-1, config.batch_size).astype(np.int32)
    losses, done = [], 0
    for k in sizes:
        chunk = par.compile_train_chunk(step, state, data, k, config.batch_size, rng)
        state, metrics = chunk(state, data, jnp.asarray(order[done : done + k]), rng)
        losses.extend(np.asarray(metrics["loss"]).tolist())
        done += k
    return state, losses, order


def test_one_scan_equals_step_by_step_dispatch(splits):
    config = _tiny_cnn()
    whole, whole_losses, _ = _run_chunks(config, splits, [6])
    stepwise, stepwise_losses, _ = _run_chunks(config, splits, [1] * 6)
    mixed, _, _ = _run_chunks(config, splits, [4, 2])
    assert int(whole.step) == 6 and len(whole_losses) == 6
    assert whole_losses == stepwise_losses
    _assert_same_state(whole, stepwise)
    _assert_same_state(whole, mixed)


def test_scanned_mlp_equals_host_fed_steps(splits):
    """The device gather feeds exactly the host's batches: for an MLP (no
    convolutions whose rounding depends on the surrounding program) even the
    separately compiled host-fed step gives the same bits."""
    config = load_config("mlp_256")
    config.batch_size = 16
    scanned, _, order = _run_chunks(config, splits, [5])
    par = parallel.DataParallel("jit")
    rng = jax.random.PRNGKey(3)
    _, state = steps.create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch=100)
    shapes = (jax.ShapeDtypeStruct((16, 28, 28, 1), jnp.uint8), jax.ShapeDtypeStruct((16,), jnp.int32))
    step = par.compile_train_step(steps.configured_train_step(config, par.axis_name), state, shapes, rng)
    images, labels = splits["train"].images[:512], splits["train"].labels[:512]
    for idx in order:
        state, _ = step(state, par.put_batch((images[idx], labels[idx])), rng)
    _assert_same_state(scanned, state)


@pytest.mark.parametrize(
    ("steps_per_dispatch", "every", "chunks"),
    # 0: sized by time (a timed 16-step probe, then at most an epoch for this tiny MLP);
    # 18: one dispatch per epoch; 7: chunks that do not divide the epoch; 7 with a
    # checkpoint every 5 steps: chunks cut by the checkpoints.
    [(0, 0, {16, 2, 18}), (18, 0, {18}), (7, 0, {7, 4}), (7, 5, {5, 2, 3, 1})],
)
def test_training_run_is_identical_for_any_steps_per_dispatch(
    tmp_path, monkeypatch, steps_per_dispatch, every, chunks
):
    """Whole runs: one dispatch per step, dispatches sized by time (0), one per epoch,
    chunks that do not divide the epoch, and chunks cut by mid-epoch checkpoints end
    with the same results. The
    chunk lengths compiled show that each case really ran as named."""
    compiled = []
    original = parallel.DataParallel.compile_train_chunk

    def recording(self, step_fn, state, data, num_steps, *args):
        compiled.append(num_steps)
        return original(self, step_fn, state, data, num_steps, *args)

    monkeypatch.setattr(parallel.DataParallel, "compile_train_chunk", recording)

    def run(spd, workdir):
        compiled.clear()
        config = load_config("mlp_4x2")
        config.num_epochs = 2
        config.validation_fraction = 0.99  # 600 training images: 18 steps per epoch.
        config.checkpoint_every_steps = every
        config.write_report = False
        config.steps_per_dispatch = spd
        result = train.train_and_evaluate(config, str(workdir))
        with open(workdir / "metrics.jsonl") as f:
            curves = [json.loads(line) for line in f]
        return result, curves, set(compiled)

    base, base_curves, base_chunks = run(1, tmp_path / "one")
    other, other_curves, other_chunks = run(steps_per_dispatch, tmp_path / "other")
    assert base_chunks == {1} and other_chunks == chunks
    assert other["step"] == base["step"] == 36
    assert other["test"] == base["test"]
    assert [c["train_loss"] for c in other_curves] == [c["train_loss"] for c in base_curves]
    assert [c["validation_loss"] for c in other_curves] == [c["validation_loss"] for c in base_curves]


def test_steps_per_dispatch_is_validated():
    from fmnist_jax.configuration import ConfigError, validate_config

    config = load_config("mlp_4x2")
    config.steps_per_dispatch = -1
    with pytest.raises(ConfigError, match=r"config\.steps_per_dispatch=-1"):
        validate_config(config)
    config.steps_per_dispatch = 10
    config.parallelism = "pmap"
    with pytest.raises(ConfigError, match="parallelism='jit'"):
        validate_config(config)


@pytest.mark.parametrize(
    ("seconds_per_step", "expected"),
    [(0.06, 16), (0.045, 16), (0.09, 8), (0.001, 421), (0.7, 2), (3.0, 1)],
)
def test_timed_dispatch_is_the_power_of_two_nearest_a_second_of_work(seconds_per_step, expected):
    assert train.DISPATCH_SECONDS == 1.0
    assert train.timed_dispatch_length(seconds_per_step, steps_per_epoch=421) == expected
