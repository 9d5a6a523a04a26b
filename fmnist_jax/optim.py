"""Learning-rate schedules and optimizers (optax), chosen by config fields."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """The schedule `config.schedule` names, in optimizer steps."""
    lr = config.learning_rate
    total = config.num_epochs * steps_per_epoch
    # A run shorter than its warmup (a one-epoch smoke test, say) warms up for half of it.
    warmup = min(round(config.warmup_epochs * steps_per_epoch), total // 2)
    if config.schedule == "constant":
        return optax.constant_schedule(lr)
    if config.schedule == "exponential":
        # lr * 10**(epoch / epochs_per_decade), changing once per epoch (seed 001, model 3).
        def exponential(step: jax.Array) -> jax.Array:
            epoch = jnp.floor_divide(step, steps_per_epoch)
            return lr * 10.0 ** (epoch / config.epochs_per_decade)

        return exponential
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, total, alpha=config.final_lr_fraction)
    if config.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup, total, end_value=lr * config.final_lr_fraction
        )
    if config.schedule == "warmup_linear":
        end = lr * config.final_lr_fraction
        pieces = [optax.linear_schedule(0.0, lr, warmup), optax.linear_schedule(lr, end, total - warmup)]
        return optax.join_schedules(pieces, [warmup])
    if config.schedule == "one_cycle":
        return optax.cosine_onecycle_schedule(total, lr, pct_start=warmup / total)
    raise ValueError(f"config.schedule={config.schedule!r} is unknown")


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam (default), AdamW or SGD with (Nesterov) momentum and decoupled weight
    decay, driven by the configured schedule."""
    return make_optimizer(config, learning_rate_schedule(config, steps_per_epoch))


def make_optimizer(
    config: ml_collections.ConfigDict, learning_rate: float | jax.Array | optax.Schedule
) -> optax.GradientTransformation:
    """The configured optimizer with a given rate or schedule."""
    if config.optimizer == "adam":
        return optax.adam(learning_rate, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)
    if config.optimizer == "adamw":
        return optax.adamw(
            learning_rate,
            b1=config.adam_b1,
            b2=config.adam_b2,
            eps=config.adam_eps,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "sgd" and config.weight_decay:
        # Decoupled: the decay is added after momentum, so it does not accumulate in it.
        return optax.chain(
            optax.trace(decay=config.momentum, nesterov=config.nesterov),
            optax.add_decayed_weights(config.weight_decay),
            optax.scale_by_learning_rate(learning_rate),
        )
    if config.optimizer == "sgd":
        return optax.sgd(learning_rate, momentum=config.momentum, nesterov=config.nesterov)
    raise ValueError(f"config.optimizer={config.optimizer!r} is unknown")
