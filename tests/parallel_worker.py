"""Run in a subprocess with 8 forced CPU devices by tests/test_parallel.py.

Trains a batch-norm CNN (no dropout) for a few steps on real batches with one
device, with 'jit' over 8 and with 'pmap' over 8, and prints per-step losses,
accuracies, final parameters' checksums and an evaluation as JSON.
"""

import importlib
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from fmnist_jax import evaluate, input_pipeline, parallel, steps

STEPS = 6


def run(mode, devices, split):
    config = importlib.import_module("configs.cnn4").get_config()
    config.model.conv_features = (8, 8, 8, 8)
    config.model.dense_dropout = 0.0
    config.batch_size = 64
    par = parallel.DataParallel(mode, devices)
    _, state = steps.create_train_state(config, jax.random.PRNGKey(0), 100, axis_name=par.axis_name)
    state = par.put_state(state)
    rng = jax.device_put(jax.random.PRNGKey(1), par.replicated)
    shapes = (jax.ShapeDtypeStruct((64, 28, 28, 1), jnp.uint8), jax.ShapeDtypeStruct((64,), jnp.int32))
    step = par.compile_train_step(steps.configured_train_step(config, par.axis_name), state, shapes, rng)
    losses, accuracies = [], []
    for images, labels in list(input_pipeline.train_batches(split, 64, seed=0, epoch=1))[:STEPS]:
        state, metrics = step(state, par.put_batch((images, labels)), rng)
        losses.append(float(metrics["loss"]))
        accuracies.append(float(metrics["accuracy"]))
    single = par.single_copy(state)
    eval_fn = par.compile_eval_step(steps.eval_step)
    subset = input_pipeline.Split(split.images[:1001], split.labels[:1001], np.arange(1001))
    return {
        "losses": losses,
        "accuracies": accuracies,
        "params": {
            jax.tree_util.keystr(path): np.asarray(x).ravel()[:50].tolist()
            for path, x in jax.tree_util.tree_leaves_with_path(single.params)
        },
        "batch_stats": [
            np.asarray(x).ravel()[:20].tolist() for x in jax.tree_util.tree_leaves(single.batch_stats)
        ],
        "eval": evaluate.evaluate(eval_fn, state, subset, 200, par),
    }


def main():
    assert jax.device_count() == 8, jax.devices()
    split = input_pipeline.load_splits()["validation"]
    out = {
        "one": run("jit", jax.devices()[:1], split),
        "jit": run("jit", jax.devices(), split),
        "pmap": run("pmap", jax.devices(), split),
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
