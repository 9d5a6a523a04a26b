"""Evaluation: every example of a split exactly once, summaries, and `--mode=eval`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fmnist_jax import (
    CLASS_NAMES,
    NUM_CLASSES,
    augment,
    checkpointing,
    configuration,
    input_pipeline,
    pages,
    parallel,
    runtime,
    steps,
)

Metrics = steps.Metrics
TrainState = steps.TrainState


def summarize_eval(loss_sum: float, confusion: np.ndarray) -> dict[str, Any]:
    """Loss, accuracy, per-class accuracy and the confusion matrix (rows: true class)."""
    confusion = np.asarray(confusion).round().astype(np.int64)
    count = int(confusion.sum())
    per_class = np.diag(confusion) / np.maximum(confusion.sum(axis=1), 1)
    return {
        "loss": float(loss_sum) / count,
        "accuracy": float(np.trace(confusion)) / count,
        "count": count,
        "per_class_accuracy": {name: float(a) for name, a in zip(CLASS_NAMES, per_class, strict=True)},
        "confusion_matrix": confusion.tolist(),
    }


def evaluate(
    eval_fn: Callable[..., Metrics],
    state: TrainState,
    split: input_pipeline.Split,
    batch_size: int,
    par: parallel.DataParallel | None = None,
) -> dict[str, Any]:
    """Evaluates every example of `split` exactly once (padded batches, masked).

    With `par`, batches are sharded over its devices and `batch_size` is rounded
    up to a multiple of the device count.
    """
    loss_sum = jnp.zeros(())
    confusion = jnp.zeros((NUM_CLASSES, NUM_CLASSES))
    if par is not None:
        batch_size = -(-batch_size // par.num_devices) * par.num_devices
        rows = par.local_rows(batch_size)
    for host_batch in input_pipeline.eval_batches(split, batch_size):
        batch = host_batch if par is None else par.put_batch([x[rows] for x in host_batch])
        out = eval_fn(state, batch)
        loss_sum += out["loss_sum"]
        confusion += out["confusion"]
    return summarize_eval(float(loss_sum), np.asarray(confusion))


def load_workdir_config(workdir: str, tta: str | None = None) -> ml_collections.ConfigDict:
    """The resolved config a training run saved in `workdir/config.json`; with `tta`, that
    test-time augmentation in place of the run's own (evaluation only: training never reads it)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise checkpointing.CheckpointError(
            f"{workdir!r} holds no config.json: not the workdir of a training run"
            + ("" if os.path.isdir(workdir) else " (it does not exist)")
        )
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if tta is not None:
        if tta not in augment.TTA_MODES:
            raise configuration.ConfigError(f"tta={tta!r}: expected one of {augment.TTA_MODES}")
        config.tta = tta
    return config


def restore_checkpoint(
    workdir: str, config: ml_collections.ConfigDict, which: str, par: parallel.DataParallel
) -> tuple[TrainState, int]:
    """The state and step of checkpoint `which` ('best', 'latest' or a step) of the
    training run in `workdir` (its saved `config`), replicated over `par`'s devices."""
    if not os.path.isdir(checkpointing.checkpoint_dir(workdir)):
        raise checkpointing.CheckpointError(f"no checkpoints in {checkpointing.checkpoint_dir(workdir)}")
    manager = checkpointing.create_manager(workdir, create=False)
    step = checkpointing.select_step(manager, which)
    _, template = steps.create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch=1)
    state, _ = checkpointing.restore(manager, step, template, par.replicated)
    return state, step


def evaluate_checkpoint(workdir: str, which: str = "best", tta: str | None = None) -> dict[str, Any]:
    """Restores checkpoint `which` ('best', 'latest' or a step) onto this process's
    devices, evaluates validation and test, and writes `workdir/eval_<step>.json`
    (`eval_<step>_tta_<tta>.json` when `tta` replaces the run's test-time augmentation)."""
    config = load_workdir_config(workdir, tta)
    # Workdirs written before the field existed use the default.
    runtime.enable_compilation_cache(config.get("compilation_cache", "auto"))
    par = parallel.DataParallel("jit")  # Whatever devices this process has.
    state, step = restore_checkpoint(workdir, config, which, par)
    splits = input_pipeline.load_splits(config.data_dir, config.validation_fraction, config.split_seed)
    eval_fn = par.compile_eval_step(steps.configured_eval_step(config))
    report = {
        "config": config.name,
        "checkpoint": which,
        "step": step,
        "tta": steps.eval_options(config)["tta"],
        "validation": evaluate(eval_fn, state, splits["validation"], config.eval_batch_size, par),
        "test": evaluate(eval_fn, state, splits["test"], config.eval_batch_size, par),
        **runtime.provenance(),
    }
    path = os.path.join(workdir, f"eval_{step}{'' if tta is None else f'_tta_{tta}'}.json")
    if jax.process_index() == 0:
        pages.write_json(path, report)
    print(
        f"{config.name} checkpoint {step} ({which}, tta {report['tta']}): validation accuracy "
        f"{report['validation']['accuracy']:.4f}, test loss {report['test']['loss']:.4f} "
        f"accuracy {report['test']['accuracy']:.4f} -> {path}",
        flush=True,
    )
    return report
