"""--mode=best_of_n: N models at once with vmap, the lowest validation loss kept.

One run of `best_of_n.best_of_n` on a tiny CNN with convolutions, batch norm and
dropout, so that the per-model dropout rng, the stacked batch statistics and the
convolution's vmap rule with one kernel per model (ops._batchable_conv) all
take part, with the sequential baseline on: the same models then trained one at
a time (N=1) by the same code. The tests compare each model of the stack with

* the same model trained alone (the baseline's N=1 run), and
* an independent path: `steps.train_step`, jitted on its own (no vmap, no
  scan), fed model i's batches with model i's rngs as best_of_n.py derives them
  (init `fold_in(seed, i)`, train rng `fold_in(fold_in(seed, i), 1)`, carve
  split seed `split_seed + i`, shuffle seed `seed + i`),

and check that the model kept is the one with the lowest validation loss.

Why not bit for bit: XLA compiles the vmapped program (models as a batch axis)
differently from the unbatched one, so a few reductions (bias gradients, batch
means) round differently, by an ulp, from the second step on. Over the 18 steps
here the parameters, Adam moments and batch statistics of the three paths stay
within 6e-8 of each other (values of order 0.01-1; measured), so they are
compared with atol 1e-6.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from fmnist_jax import best_of_n, checkpointing, evaluate, input_pipeline, steps

N_MODELS = 2
ATOL = 1e-6  # Measured max |difference| 6e-8 (see the module docstring).
# Validation losses (about 2.3) of the stack and alone: measured max relative difference 0 (equal).
VAL_LOSS_RTOL = 1e-5


def tiny_cnn_config():
    config = load_config("cnn4")  # BN, dense dropout 0.3, Adam.
    config.model.conv_features = (4, 8)
    config.model.dense_features = (16,)
    config.model.conv_dropout = (0.0, 0.2)  # Dropout on feature maps too.
    config.validation_fraction = 0.99  # 600 training images per model: 18 steps of 32.
    config.batch_size = 32
    # One epoch: each epoch evaluates 59,400 validation images per model, most of the time here.
    config.num_epochs = 1
    config.best_of_n = N_MODELS
    config.best_of_n_sequential_baseline = True  # Model i alone, N=1, by the same code.
    return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """best_of_n on the tiny CNN, with the states and records of every `_train`
    call it makes: first the stack, then each model alone (the baseline)."""
    config = tiny_cnn_config()
    workdir = str(tmp_path_factory.mktemp("best_of_n"))
    calls = []
    train_fn = best_of_n._train

    def recording_train(config, n, data, carves, model_ids, log):
        states, record = train_fn(config, n, data, carves, model_ids, log)
        calls.append((list(model_ids), jax.device_get(states), record))
        return states, record

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(best_of_n, "_train", recording_train)
        results = best_of_n.best_of_n(config, workdir)
    assert [ids for ids, _, _ in calls] == [list(range(N_MODELS))] + [[i] for i in range(N_MODELS)]
    return {
        "config": config,
        "workdir": workdir,
        "results": results,
        "stack": calls[0][1:],
        "alone": [c[1:] for c in calls[1:]],
    }


def _model(states, i):
    return jax.tree_util.tree_map(lambda x: np.asarray(x)[i], states)


def _assert_same_model(a, b):
    """States of one model from two paths: equal up to rounding, leaf by leaf.

    The biases of the convolutions, which batch norm follows, stay exactly 0 in
    every path: the loss does not depend on them, and the fused block
    (`ops.bn_relu_pool`) gives them a gradient of exactly 0. (Through autodiff
    it is rounding noise, which Adam scales up to steps of the learning rate in
    a direction that rounding decides, and the paths would drift apart there.)
    """
    assert int(a.step) == int(b.step)
    flat_a = jax.tree_util.tree_flatten_with_path((a.params, a.batch_stats, a.opt_state))[0]
    flat_b = jax.tree_util.tree_leaves((b.params, b.batch_stats, b.opt_state))
    for (path, x), y in zip(flat_a, flat_b, strict=True):
        name = jax.tree_util.keystr(path)
        x, y = np.asarray(x), np.asarray(y)
        if "Conv_" in name and "bias" in name:
            assert not x.any() and not y.any(), name
        np.testing.assert_allclose(x, y, rtol=0, atol=ATOL, err_msg=name)


def _plain_train_steps(config, arrays, i):
    """Model i trained with `steps.train_step` alone, step by step."""
    train_rows = best_of_n._carves(config, N_MODELS)[i][0]
    steps_per_epoch = len(train_rows) // config.batch_size
    _, make_state = steps.train_state_fn(config, steps_per_epoch)
    root = jax.random.PRNGKey(config.seed)
    state = make_state(jax.random.fold_in(root, i))
    rng = jax.random.fold_in(jax.random.fold_in(root, i), 1)
    step = jax.jit(functools.partial(steps.train_step, normalize=config.normalize))
    images, labels = arrays["train_images"], arrays["train_labels"].astype(np.int32)
    for epoch in range(1, config.num_epochs + 1):
        order = input_pipeline.epoch_batch_indices(len(train_rows), config.batch_size, config.seed + i, epoch)
        for rows in train_rows[order]:
            state, _ = step(state, (jnp.asarray(images[rows]), jnp.asarray(labels[rows])), rng)
    assert int(state.step) == config.num_epochs * steps_per_epoch == 18
    return state


def _validation_loss(config, arrays, state, i):
    """Mean loss of `state` on model i's validation carve: steps.eval_step batch
    by batch, summed in float64."""
    rows = best_of_n._carves(config, N_MODELS)[i][1]
    split = input_pipeline.Split(
        arrays["train_images"][rows], arrays["train_labels"][rows].astype(np.int32), rows
    )
    evaluate = jax.jit(functools.partial(steps.eval_step, normalize=config.normalize))
    total = sum(
        float(evaluate(state, batch)["loss_sum"]) for batch in input_pipeline.eval_batches(split, 1000)
    )
    return total / len(rows)


def test_each_model_of_the_stack_equals_it_trained_alone(run):
    stack, stack_record = run["stack"]
    for i, (alone, alone_record) in enumerate(run["alone"]):
        _assert_same_model(_model(stack, i), _model(alone, 0))
        for stack_epoch, alone_epoch in zip(stack_record["history"], alone_record["history"], strict=True):
            np.testing.assert_allclose(
                stack_epoch["validation_loss"][i], alone_epoch["validation_loss"][0], rtol=VAL_LOSS_RTOL
            )
    # The models differ (carves, inits, dropout draws), so the comparisons above
    # would fail if every model of the stack were trained as model 0.
    a, b = _model(stack, 0), _model(stack, 1)
    assert np.abs(a.params["Conv_1"]["kernel"] - b.params["Conv_1"]["kernel"]).max() > 1e-2
    assert np.abs(a.batch_stats["BatchNorm_1"]["var"] - b.batch_stats["BatchNorm_1"]["var"]).max() > 1e-2


def test_each_model_of_the_stack_equals_plain_train_steps(run):
    """Not best_of_n's code against itself: model i of the stack against the
    ordinary train step applied to model i's batches with model i's rngs; and
    its recorded validation loss against its loss on its own carve."""
    config = run["config"]
    arrays = input_pipeline.load_arrays(config.data_dir)
    stack, stack_record = run["stack"]
    for i in range(N_MODELS):
        _assert_same_model(_model(stack, i), _plain_train_steps(config, arrays, i))
        # The same parameters and batches: measured equal to the bit. Evaluated on
        # the other model's carve (99% the same images) it differs by 4.5e-6.
        np.testing.assert_allclose(
            stack_record["history"][-1]["validation_loss"][i],
            _validation_loss(config, arrays, _model(stack, i), i),
            rtol=1e-6,
        )


def test_the_model_with_the_lowest_validation_loss_is_kept(run):
    config, results = run["config"], run["results"]
    stack, stack_record = run["stack"]
    val_loss = np.asarray(results["validation_loss"])
    assert val_loss.tolist() == stack_record["history"][-1]["validation_loss"]
    assert len(set(val_loss.tolist())) == N_MODELS  # Different carves and inits: different models.
    best = int(np.argmin(val_loss))
    assert results["chosen_model"] == best
    assert results["chosen_split_seed"] == config.split_seed + best
    assert results["test"]["accuracy"] == results["test_accuracy"][best]
    assert results["sequential_train_seconds"] > 0 and results["vmap_speedup"] > 0

    # The workdir's checkpoint is model `best` of the stack, bit for bit, and its
    # config.json names that model's carve, so --mode=eval validates it on its own.
    manager = checkpointing.create_manager(run["workdir"], create=False)
    _, template = steps.create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch=1)
    saved, _ = checkpointing.restore(manager, checkpointing.select_step(manager, "latest"), template)
    chosen = _model(stack, best)
    for x, y in zip(
        jax.tree_util.tree_leaves((saved.step, saved.params, saved.batch_stats)),
        jax.tree_util.tree_leaves((chosen.step, chosen.params, chosen.batch_stats)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(x), y)
    assert evaluate.load_workdir_config(run["workdir"]).split_seed == config.split_seed + best
    carves = best_of_n._carves(config, N_MODELS)
    assert not np.array_equal(carves[0][1], carves[1][1])
