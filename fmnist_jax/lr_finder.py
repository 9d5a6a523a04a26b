"""Learning-rate range test (seed 001, model 3): sweep the rate exponentially, plot loss.

Trains a fresh model for `config.lr_find_steps` steps while the learning rate
grows from `config.lr_find_min` to `config.lr_find_max` by the same factor every
step, records the training loss, and stops early once the smoothed loss exceeds
four times its minimum (the rate has diverged). The suggestion rule: the rate at
the minimum of the smoothed loss, divided by 10 (the largest rate that still
decreases the loss well, with a margin for the rest of training).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from fmnist_jax import augment, input_pipeline, optim, runtime, steps
from fmnist_jax.configuration import validate_config

SMOOTHING = 0.9  # Exponential moving average of the per-step loss (bias-corrected).
DIVERGENCE_FACTOR = 4.0


def sweep_rates(min_lr: float, max_lr: float, steps: int) -> np.ndarray:
    """The exponentially spaced rates, one per step, from min_lr to max_lr inclusive."""
    return np.asarray(min_lr * (max_lr / min_lr) ** (np.arange(steps) / max(steps - 1, 1)))


def smooth(losses: np.ndarray, beta: float = SMOOTHING) -> np.ndarray:
    """Bias-corrected exponential moving average."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * float(loss)
        out.append(avg / (1 - beta**i))
    return np.asarray(out)


def suggest(rates: np.ndarray, smoothed: np.ndarray) -> float:
    """The rule: the rate at the minimum of the smoothed loss, divided by 10."""
    return float(rates[int(np.argmin(smoothed))] / 10.0)


def find_learning_rate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs the range test; writes `lr_find.json` and `lr_find.png` in `workdir`."""
    validate_config(config)
    runtime.enable_compilation_cache(config.compilation_cache)
    runtime.prepare_workdir(workdir)
    splits = input_pipeline.load_splits(config.data_dir, config.validation_fraction, config.split_seed)
    rates = sweep_rates(config.lr_find_min, config.lr_find_max, config.lr_find_steps)
    init_rng, rng = jax.random.split(jax.random.PRNGKey(config.seed))
    _, state = steps.create_train_state(config, init_rng, steps_per_epoch=1)
    # The optimizer's rate is injected so one compiled step serves every rate.
    tx = optax.inject_hyperparams(functools.partial(optim.make_optimizer, config))(
        learning_rate=float(rates[0])
    )
    state = state.replace(tx=tx, opt_state=tx.init(state.params))
    step_fn = _step_at_rate(config)
    losses: list[float] = []
    epoch = 0
    batches: Iterator[tuple[np.ndarray, np.ndarray]] = iter(())
    for lr in rates:
        batch = next(batches, None)
        if batch is None:
            epoch += 1
            batches = input_pipeline.train_batches(splits["train"], config.batch_size, config.seed, epoch)
            batch = next(batches)
        state, metrics = step_fn(state, batch, rng, jnp.float32(lr))
        losses.append(float(metrics["loss"]))
        smoothed = smooth(np.asarray(losses))
        if not np.isfinite(losses[-1]) or smoothed[-1] > DIVERGENCE_FACTOR * smoothed.min():
            break
    n = len(losses)
    smoothed = smooth(np.asarray(losses))
    result = {
        "config": config.name,
        "rule": "rate at the minimum of the smoothed loss (EMA 0.9), divided by 10",
        "suggested_learning_rate": suggest(rates[:n], smoothed),
        "rate_at_minimum": float(rates[int(np.argmin(smoothed))]),
        "steps_run": n,
        "learning_rates": rates[:n].tolist(),
        "losses": losses,
        "smoothed_losses": smoothed.tolist(),
    }
    with open(os.path.join(workdir, "lr_find.json"), "w") as f:
        json.dump(result, f, indent=2)
    plot(result, os.path.join(workdir, "lr_find.png"))
    print(
        f"{config.name}: suggested learning rate {result['suggested_learning_rate']:.2e} "
        f"(rule: {result['rule']}; minimum at {result['rate_at_minimum']:.2e}, {n} steps) -> "
        f"{os.path.join(workdir, 'lr_find.png')}",
        flush=True,
    )
    return result


def _step_at_rate(config: ml_collections.ConfigDict) -> Any:
    """The compiled train step with the config's options and the rate as an argument."""
    # Translations and cutout as in training; there are no epochs to alternate flips over.
    augmentation = dataclasses.replace(augment.from_config(config, 1), alternate_flip=False)
    return jax.jit(
        lambda state, batch, rng, lr: steps.train_step(
            state.replace(opt_state=_with_rate(state.opt_state, lr)),
            batch,
            rng,
            normalize=config.normalize,
            augment_flip=config.augment_flip,
            label_smoothing=config.label_smoothing,
            augmentation=augmentation,
        )
    )


def _with_rate(opt_state: Any, lr: jax.Array) -> Any:
    return opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": lr})


def plot(result: dict[str, Any], path: str) -> None:
    """Loss against learning rate, log x, with the suggestion marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    ax.plot(result["learning_rates"], result["losses"], alpha=0.3, label="loss per step")
    ax.plot(result["learning_rates"], result["smoothed_losses"], label="smoothed")
    ax.axvline(result["suggested_learning_rate"], color="C2", linestyle="--", label="suggested")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"{result['config']}: learning-rate range test")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
