"""`--mode=ensemble`: several training runs evaluated as one model, the mean of their logits.

Each member's logits are its own evaluation logits (`steps.eval_logits`, with its own
config's preprocessing and test-time augmentation); the ensemble predicts the argmax of
their mean. Members must share the data split, so that no member has trained on
another's validation or test images.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fmnist_jax import configuration, evaluate, input_pipeline, pages, parallel, runtime, steps

# What decides the train/validation carve and the test split (normalize may differ:
# each member preprocesses as it trained).
SPLIT_FIELDS = ("data_dir", "validation_fraction", "split_seed")
EVAL_SPLITS = ("validation", "test")


def check_same_split(workdirs: Sequence[str], configs: Sequence[ml_collections.ConfigDict]) -> None:
    """Raises ConfigError naming the first member whose data split differs from the first's."""
    for workdir, config in zip(workdirs[1:], configs[1:], strict=True):
        for field in SPLIT_FIELDS:
            if config.get(field) != configs[0].get(field):
                raise configuration.ConfigError(
                    f"ensemble members must share the data split: {workdir} has {field}="
                    f"{config.get(field)!r}, {workdirs[0]} has {configs[0].get(field)!r}"
                )


def member_logits(
    config: ml_collections.ConfigDict,
    state: steps.TrainState,
    splits: dict[str, input_pipeline.Split],
    par: parallel.DataParallel,
) -> dict[str, np.ndarray]:
    """One member's evaluation logits (examples, classes) of every example of each of
    EVAL_SPLITS, in order, in batches of its `eval_batch_size` (padded, padding dropped)."""
    logits_fn = jax.jit(
        functools.partial(steps.eval_logits, **steps.eval_options(config)),
        in_shardings=(par.replicated, par.batch_sharding),
    )
    batch_size = -(-config.eval_batch_size // par.num_devices) * par.num_devices
    out = {}
    for name in EVAL_SPLITS:
        batches = input_pipeline.eval_batches(splits[name], batch_size)
        logits = [np.asarray(logits_fn(state, par.put_batch([images])[0])) for images, _, _ in batches]
        out[name] = np.concatenate(logits)[: len(splits[name])]
    return out


def summarize_logits(logits: Sequence[np.ndarray], labels: np.ndarray) -> dict[str, Any]:
    """`evaluate.summarize_eval` of the mean of the members' `logits` against `labels`."""
    mean = jnp.mean(jnp.stack([jnp.asarray(x) for x in logits]), axis=0)
    sums = steps.eval_sums(mean, jnp.asarray(labels), jnp.ones(len(labels), jnp.float32))
    return evaluate.summarize_eval(float(sums["loss_sum"]), np.asarray(sums["confusion"]))


def evaluate_ensemble(
    workdirs: Sequence[str], which: str, output: str, tta: str | None = None
) -> dict[str, Any]:
    """Restores checkpoint `which` ('best', 'latest' or a step) of every training run in
    `workdirs`, evaluates the mean of their logits on validation and test, and writes
    the report (members, loss, accuracy, per-class accuracy, confusion matrix) to `output`.
    With `tta`, every member uses that test-time augmentation instead of its own."""
    if not workdirs:
        raise configuration.ConfigError("--mode=ensemble needs at least one --workdir (a training run)")
    if jax.process_count() > 1:
        raise configuration.ConfigError("--mode=ensemble runs in one process")
    configs = [evaluate.load_workdir_config(w, tta) for w in workdirs]
    check_same_split(workdirs, configs)
    runtime.prepare_workdir(os.path.dirname(output) or ".")  # An unwritable --output fails first.
    runtime.enable_compilation_cache(configs[0].get("compilation_cache", "auto"))
    par = parallel.DataParallel("jit")  # Whatever devices this process has.
    restored = [evaluate.restore_checkpoint(w, c, which, par) for w, c in zip(workdirs, configs, strict=True)]
    first = configs[0]
    splits = input_pipeline.load_splits(first.data_dir, first.validation_fraction, first.split_seed)
    logits = [member_logits(c, state, splits, par) for c, (state, _) in zip(configs, restored, strict=True)]
    members = [
        {"workdir": w, "config": c.name, "step": step, "tta": steps.eval_options(c)["tta"]}
        for w, c, (_, step) in zip(workdirs, configs, restored, strict=True)
    ]
    report = {
        "members": members,
        "checkpoint": which,
        **{name: summarize_logits([x[name] for x in logits], splits[name].labels) for name in EVAL_SPLITS},
        **runtime.provenance(),
    }
    pages.write_json(output, report)
    print(
        f"ensemble of {len(workdirs)} ({which} checkpoints: "
        + ", ".join(f"{m['workdir']} step {m['step']}" for m in members)
        + f"): validation accuracy {report['validation']['accuracy']:.4f}, test loss "
        f"{report['test']['loss']:.4f} accuracy {report['test']['accuracy']:.4f} -> {output}",
        flush=True,
    )
    return report
