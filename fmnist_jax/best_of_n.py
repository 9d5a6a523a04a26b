"""Best of N (seed 003): N models, each on its own train/validation carve, trained
at once and the one with the lowest validation loss kept.

    python launch.py --mode=best_of_n --config=configs/cnn2_dropout.py [--config.best_of_n=4]

The N models are one stacked state; `jax.vmap` over the model axis turns the
train step into one step for all of them, and `lax.scan` runs a whole epoch of
such steps per dispatch, with every model's batches gathered on the device from
the full 60,000-image training set. Model i carves its validation set with
split seed `config.split_seed + i` and initialises from `fold_in(seed, i)`.

The chosen model is saved as an ordinary checkpoint of the workdir (its
config.json carries its split seed), so `--mode=eval` and `--mode=predict` work
on it. With `config.best_of_n_sequential_baseline`, the same N models are also
trained one after another with the same code (N=1 programs) and the speedup of
the vmapped run over them is measured and written to results.json.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fmnist_jax import checkpointing, evaluate, input_pipeline, models, pages, runtime, steps
from fmnist_jax.configuration import ConfigError, validate_config


def _carves(config: ml_collections.ConfigDict, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        input_pipeline.carve_validation(
            input_pipeline.NUM_TRAIN, config.validation_fraction, config.split_seed + i
        )
        for i in range(n)
    ]


def _epoch_indices(
    carves: list[tuple[np.ndarray, np.ndarray]], model_ids: list[int], seed: int, epoch: int, batch_size: int
) -> np.ndarray:
    """(steps, models, batch) rows of the full training set: each model's own
    shuffled training carve, seeded by (seed + model, epoch)."""
    per_model = []
    for i in model_ids:
        train_idx = carves[i][0]
        per_model.append(
            train_idx[input_pipeline.epoch_batch_indices(len(train_idx), batch_size, seed + i, epoch)]
        )
    return np.stack(per_model, axis=1).astype(np.int32)


def _compile_epoch(config: ml_collections.ConfigDict, states: Any, data: Any, indices: np.ndarray) -> Any:
    """One program: a scan over the epoch's steps of the vmapped train step."""
    step = steps.configured_train_step(config)  # No collective axis.

    def epoch(states: Any, data: Any, indices: jax.Array, rngs: jax.Array) -> Any:
        images, labels = data

        def body(states: Any, idx: jax.Array) -> Any:
            return jax.vmap(step)(states, (images[idx], labels[idx]), rngs)

        return jax.lax.scan(body, states, indices)

    shapes = jax.ShapeDtypeStruct(indices.shape, jnp.int32)
    rngs = jax.ShapeDtypeStruct((indices.shape[1], *jax.random.PRNGKey(0).shape), jnp.uint32)
    return jax.jit(epoch, donate_argnums=0).lower(states, data, shapes, rngs).compile()


def _evaluator(config: ml_collections.ConfigDict) -> Callable[..., Any]:
    """steps.eval_step (summed loss, confusion matrix) of every model on its own rows."""

    def run(states: Any, data: Any, idx: jax.Array, mask: jax.Array) -> Any:
        images, labels = data

        def one(state: Any, rows: jax.Array, m: jax.Array) -> Any:
            return steps.eval_step(state, (images[rows], labels[rows], m), **steps.eval_options(config))

        return jax.vmap(one)(states, idx, mask)

    return jax.jit(run)


def _evaluate(
    eval_fn: Any, states: Any, data: Any, rows: np.ndarray, batch: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean loss and accuracy per model; rows is (models, examples)."""
    n_models, n = rows.shape
    loss, correct = np.zeros(n_models), np.zeros(n_models)
    for start in range(0, n, batch):
        idx = rows[:, start : start + batch]
        mask = np.ones(idx.shape, np.float32)
        pad = batch - idx.shape[1]
        if pad:
            idx = np.concatenate([idx, np.zeros((n_models, pad), idx.dtype)], 1)
            mask = np.concatenate([mask, np.zeros((n_models, pad), np.float32)], 1)
        sums = jax.device_get(eval_fn(states, data, jnp.asarray(idx, jnp.int32), jnp.asarray(mask)))
        loss += sums["loss_sum"]
        correct += np.trace(sums["confusion"], axis1=1, axis2=2)
    return loss / n, correct / n


def _train(
    config: ml_collections.ConfigDict,
    n: int,
    data: Any,
    carves: list[tuple[np.ndarray, np.ndarray]],
    model_ids: list[int],
    log: Callable[[str], None],
) -> tuple[Any, dict[str, Any]]:
    """Trains models `model_ids` as one vmapped stack; returns the states and a record."""
    batch = config.batch_size
    ours = [carves[i] for i in model_ids]
    steps_per_epoch = (len(ours[0][0])) // batch
    root = jax.random.PRNGKey(config.seed)
    model, template = steps.create_train_state(config, root, steps_per_epoch)

    def init(rng: jax.Array) -> Any:
        variables = models.init_variables(model, rng)
        params = variables["params"]
        return template.replace(
            params=params, batch_stats=variables.get("batch_stats", {}), opt_state=template.tx.init(params)
        )

    states = jax.jit(jax.vmap(init))(jnp.stack([jax.random.fold_in(root, i) for i in model_ids]))
    rngs = jnp.stack([jax.random.fold_in(jax.random.fold_in(root, i), 1) for i in model_ids])
    t0 = time.perf_counter()
    epoch_fn = _compile_epoch(config, states, data, _epoch_indices(carves, model_ids, config.seed, 1, batch))
    eval_fn = _evaluator(config)
    compile_seconds = time.perf_counter() - t0
    val_rows = np.stack([v for _, v in ours])
    history: list[dict[str, Any]] = []
    train_seconds = 0.0
    for epoch in range(1, config.num_epochs + 1):
        idx = _epoch_indices(carves, model_ids, config.seed, epoch, batch)
        t = time.perf_counter()
        states, metrics = epoch_fn(states, data, jnp.asarray(idx), rngs)
        losses = np.asarray(jax.device_get(metrics["loss"]))  # (steps, models); waits for the epoch.
        seconds = time.perf_counter() - t
        train_seconds += seconds
        if not np.all(np.isfinite(losses)):
            raise FloatingPointError(f"a train loss is not finite in epoch {epoch}; stopping without saving")
        val_loss, val_acc = _evaluate(eval_fn, states, data, val_rows, config.eval_batch_size)
        history.append(
            {
                "epoch": epoch,
                "train_loss": losses.mean(0).tolist(),
                "validation_loss": val_loss.tolist(),
                "validation_accuracy": val_acc.tolist(),
                "epoch_seconds": seconds,
            }
        )
        log(
            f"epoch {epoch:3d}/{config.num_epochs}  models {model_ids}  val loss "
            + " ".join(f"{x:.4f}" for x in val_loss)
            + f"  {len(model_ids) * idx.shape[0] * batch / seconds:,.0f} img/s  {seconds:.1f}s"
        )
    return states, {"history": history, "train_seconds": train_seconds, "compile_seconds": compile_seconds}


def best_of_n(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains config.best_of_n models at once, keeps the lowest validation loss."""
    validate_config(config)
    runtime.enable_compilation_cache(config.compilation_cache)
    n = config.best_of_n
    if n < 1:
        raise ConfigError(f"config.best_of_n={n}: must be >= 1")
    if config.alternate_flip:
        raise ConfigError(
            "config.alternate_flip=True: best_of_n trains on per-model carves; use augment_flip"
        )
    say = lambda s: print(s, flush=True)  # noqa: E731
    runtime.prepare_workdir(workdir)
    t_launch = time.perf_counter()
    arrays = input_pipeline.load_arrays(config.data_dir)
    data = (jnp.asarray(arrays["train_images"]), jnp.asarray(arrays["train_labels"], jnp.int32))
    carves = _carves(config, n)
    say(
        f"{config.name}: best of {n} models trained at once (vmap), {len(carves[0][0])} train / "
        f"{len(carves[0][1])} validation each, split seeds {config.split_seed}..{config.split_seed + n - 1}; "
        f"{runtime.machine_description()}"
    )
    states, record = _train(config, n, data, carves, list(range(n)), say)
    results = _choose(config, states, record, arrays)
    best = results["chosen_model"]
    if config.best_of_n_sequential_baseline:
        results.update(_sequential_baseline(config, data, carves, record["train_seconds"], say))
    chosen = jax.tree_util.tree_map(lambda x: x[best], states)
    _save_chosen(config, workdir, chosen, best, record["train_seconds"], results["validation_accuracy"][best])
    results["wall_seconds"] = time.perf_counter() - t_launch
    pages.write_json(os.path.join(workdir, "results.json"), results)
    say(
        f"saved model {best} as the checkpoint at step {int(chosen.step)} in {checkpointing.checkpoint_dir(workdir)}"
    )
    return results


def _choose(
    config: ml_collections.ConfigDict, states: Any, record: dict[str, Any], arrays: dict[str, np.ndarray]
) -> dict[str, Any]:
    """The model with the lowest final validation loss, and every model's test numbers."""
    final_val_loss = np.asarray(record["history"][-1]["validation_loss"])
    best = int(np.argmin(final_val_loss))
    chosen = jax.tree_util.tree_map(lambda x: x[best], states)
    test = input_pipeline.Split(
        arrays["test_images"], arrays["test_labels"], np.arange(len(arrays["test_labels"]))
    )
    eval_fn = jax.jit(steps.configured_eval_step(config))
    test_all = []
    for i in range(len(final_val_loss)):
        one = jax.tree_util.tree_map(lambda x, i=i: x[i], states)
        test_all.append(evaluate.evaluate(eval_fn, one, test, config.eval_batch_size))
    print(
        f"validation losses {' '.join(f'{x:.4f}' for x in final_val_loss)}: keeping model {best}; "
        f"its test accuracy {test_all[best]['accuracy']:.4f} (all: "
        + " ".join(f"{t['accuracy']:.4f}" for t in test_all)
        + ")",
        flush=True,
    )
    return {
        "config": config.name,
        "best_of_n": len(final_val_loss),
        "chosen_model": best,
        "chosen_split_seed": config.split_seed + best,
        "num_params": models.count_parameters({"params": chosen.params, "batch_stats": chosen.batch_stats}),
        "validation_loss": final_val_loss.tolist(),
        "validation_accuracy": record["history"][-1]["validation_accuracy"],
        "test_accuracy": [t["accuracy"] for t in test_all],
        "test": test_all[best],
        "history": record["history"],
        "vmapped_train_seconds": record["train_seconds"],
        "vmapped_compile_seconds": record["compile_seconds"],
        **runtime.provenance(),
    }


def _sequential_baseline(
    config: ml_collections.ConfigDict,
    data: Any,
    carves: Any,
    vmapped_seconds: float,
    say: Callable[[str], None],
) -> dict[str, float]:
    """The same models trained one after another with the same code: the vmap speedup."""
    n = config.best_of_n
    say(f"baseline: the same {n} models one after another ...")
    sequential = sum(_train(config, 1, data, carves, [i], say)[1]["train_seconds"] for i in range(n))
    say(
        f"training time: {n} models at once {vmapped_seconds:.1f}s, one after another "
        f"{sequential:.1f}s: vmap is {sequential / vmapped_seconds:.2f}x faster"
    )
    return {"sequential_train_seconds": sequential, "vmap_speedup": sequential / vmapped_seconds}


def _save_chosen(
    config: ml_collections.ConfigDict,
    workdir: str,
    chosen: Any,
    best: int,
    train_seconds: float,
    validation_accuracy: float,
) -> None:
    """The chosen model as the workdir's checkpoint, with the config that evaluates it."""
    chosen_config = ml_collections.ConfigDict(config.to_dict())
    chosen_config.split_seed = config.split_seed + best
    pages.write_json(os.path.join(workdir, "config.json"), json.loads(chosen_config.to_json_best_effort()))
    manager = checkpointing.create_manager(workdir)
    progress: dict[str, Any] = {"epoch_records": [], "partial": None, "train_seconds": train_seconds}
    checkpointing.save(manager, chosen, progress, float(validation_accuracy))
    manager.wait_until_finished()
