"""The train state and the pure steps: one optimizer step, one evaluation batch.

`train_step` and `eval_step` are pure functions of (state, batch, rng); the training
loop (train.py), best-of-N (vmapped) and the benchmark compile them. The configured
versions, with a config's options bound, come from `configured_train_step` and
`configured_eval_step`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from fmnist_jax import NUM_CLASSES, augment, models, optim

Metrics = dict[str, jax.Array]


class TrainState(train_state.TrainState):
    """Params and optimizer state (from flax) plus batch-norm statistics and, with
    `config.ema_decay`, a moving average of the params (what evaluation uses)."""

    batch_stats: Any = None
    ema_params: Any = None


def train_state_fn(
    config: ml_collections.ConfigDict, steps_per_epoch: int, axis_name: str | None = None
) -> tuple[nn.Module, Callable[[jax.Array], TrainState]]:
    """The model and a function rng -> initial TrainState (one copy).

    Every state it makes shares one model and one optimizer, so states made by
    it, or their `jax.eval_shape`, fit the same compiled programs.
    `axis_name`: the pmap axis over which batch norm averages its statistics.
    """
    model = models.create_model(
        config.model, NUM_CLASSES, axis_name=axis_name, compute_dtype=config.compute_dtype
    )
    tx = optim.create_optimizer(config, steps_per_epoch)

    def make_state(rng: jax.Array) -> TrainState:
        variables = models.init_variables(model, rng)
        state = TrainState.create(
            apply_fn=model.apply,
            params=variables["params"],
            tx=tx,
            batch_stats=variables.get("batch_stats", {}),
            # A copy: the train step donates the state, and a buffer cannot be donated twice.
            ema_params=jax.tree_util.tree_map(jnp.copy, variables["params"])
            if config.get("ema_decay", 0.0)
            else None,
        )
        # A strongly typed step: the same program before and after a restore.
        return state.replace(step=jnp.zeros((), jnp.int32))

    return model, make_state


def create_train_state(
    config: ml_collections.ConfigDict, rng: jax.Array, steps_per_epoch: int, axis_name: str | None = None
) -> tuple[nn.Module, TrainState]:
    """The model and its initial TrainState (one copy), initialised from `rng`."""
    model, make_state = train_state_fn(config, steps_per_epoch, axis_name)
    return model, make_state(rng)


def preprocess(images: jax.Array, normalize: bool) -> jax.Array:
    """uint8 images -> float32, scaled to [0, 1] when `normalize`."""
    x = images.astype(jnp.float32)
    return x / 255.0 if normalize else x


def eval_params(state: TrainState) -> Any:
    """The params evaluation uses: the moving average when the run keeps one."""
    return state.params if state.ema_params is None else state.ema_params


def update_ema(state: TrainState, decay: float) -> TrainState:
    """The moving average one step on: decay min(`decay`, (1 + t) / (10 + t)) at step
    t (the state's step after the update), so early steps weigh more."""
    t = jnp.asarray(state.step, jnp.float32)
    d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
    ema = optax.incremental_update(state.params, state.ema_params, 1.0 - d)
    return state.replace(ema_params=ema)


def model_variables(state: TrainState, params: Any) -> dict[str, Any]:
    """The variables `apply_fn` takes: `params`, with the state's batch statistics if any."""
    if state.batch_stats:
        return {"params": params, "batch_stats": state.batch_stats}
    return {"params": params}


def train_step(
    state: TrainState,
    batch: tuple[jax.Array, jax.Array],
    rng: jax.Array,
    *,
    normalize: bool = True,
    augment_flip: bool = False,
    label_smoothing: float = 0.0,
    axis_name: str | None = None,
    augmentation: augment.Augment = augment.NONE,
    ema_decay: float = 0.0,
) -> tuple[TrainState, Metrics]:
    """One optimizer step on a batch of (uint8 images, int labels).

    Dropout and augmentation draw from `rng` folded with the step number, so a
    step's randomness depends only on (rng, step). Under `jax.pmap`, `axis_name`
    names the device axis: gradients and metrics are averaged over it.
    `augmentation`: translations, cutout, alternating flips (after `augment_flip`);
    `ema_decay` > 0 updates the state's moving average of the params.
    """
    images, labels = batch
    step_rng = jax.random.fold_in(rng, state.step)
    if axis_name is not None:
        step_rng = jax.random.fold_in(step_rng, jax.lax.axis_index(axis_name))
    dropout_rng, flip_rng = jax.random.split(step_rng)
    x = preprocess(images, normalize)
    if augment_flip:
        x = augment.random_flip(x, flip_rng)
    if augmentation.active:
        x = augmentation(x, jax.random.fold_in(step_rng, 2), state.step)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, NUM_CLASSES), label_smoothing)

    def loss_fn(params: Any) -> tuple[jax.Array, tuple[jax.Array, Any]]:
        logits, updates = state.apply_fn(
            model_variables(state, params),
            x,
            train=True,
            rngs={"dropout": dropout_rng},
            mutable=["batch_stats"],
        )
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
    if axis_name is not None:
        grads, metrics = jax.lax.pmean((grads, metrics), axis_name)
    state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
    if ema_decay:
        state = update_ema(state, ema_decay)
    return state, metrics


def eval_logits(
    state: TrainState, images: jax.Array, *, normalize: bool = True, tta: str = "none", tta_shift: int = 1
) -> jax.Array:
    """The logits evaluation uses for uint8 `images`: the model with `eval_params`, no
    dropout; with `tta` other than "none", the mean of its logits over the batch's
    test-time views (`augment.tta_views`, shifted by `tta_shift` pixels)."""
    variables = model_variables(state, eval_params(state))
    views = augment.tta_views(preprocess(images, normalize), tta, tta_shift)
    logits = [state.apply_fn(variables, x, train=False) for x in views]
    return logits[0] if len(logits) == 1 else jnp.mean(jnp.stack(logits), axis=0)


def eval_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> Metrics:
    """Summed cross-entropy and the confusion matrix (rows: true class) of `logits`
    against `labels`; mask 0 marks padding."""
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    predicted = jnp.argmax(logits, -1)
    confusion = jnp.einsum(
        "n,ni,nj->ij",
        mask,
        jax.nn.one_hot(labels, NUM_CLASSES),
        jax.nn.one_hot(predicted, NUM_CLASSES),
    )
    return {"loss_sum": jnp.sum(loss * mask), "confusion": confusion}


def eval_step(
    state: TrainState,
    batch: tuple[jax.Array, jax.Array, jax.Array],
    *,
    normalize: bool = True,
    tta: str = "none",
    tta_shift: int = 1,
) -> Metrics:
    """Summed loss and the confusion matrix of one padded batch; mask 0 marks padding.
    Its logits are `eval_logits` (with `tta`: averaged over test-time views)."""
    images, labels, mask = batch
    logits = eval_logits(state, images, normalize=normalize, tta=tta, tta_shift=tta_shift)
    return eval_sums(logits, labels, mask)


def configured_train_step(
    config: ml_collections.ConfigDict, axis_name: str | None = None, steps_per_epoch: int = 0
) -> Callable[[TrainState, tuple[jax.Array, jax.Array], jax.Array], tuple[TrainState, Metrics]]:
    """`train_step` with the config's data, augmentation and loss options bound
    (`steps_per_epoch`: where epochs start, for `config.alternate_flip`)."""
    if config.get("alternate_flip", False) and steps_per_epoch < 1:
        raise ValueError("alternate_flip needs the steps per epoch")
    return functools.partial(
        train_step,
        normalize=config.normalize,
        augment_flip=config.augment_flip,
        label_smoothing=config.label_smoothing,
        axis_name=axis_name,
        augmentation=augment.from_config(config, steps_per_epoch),
        ema_decay=float(config.get("ema_decay", 0.0)),
    )


def eval_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The keyword options of `eval_step` and `eval_logits` a config sets: preprocessing
    and test-time augmentation (configs saved before `tta` existed evaluate without it)."""
    return {
        "normalize": config.normalize,
        "tta": config.get("tta", "none"),
        "tta_shift": int(config.get("tta_shift", 1)),
    }


def configured_eval_step(config: ml_collections.ConfigDict) -> Callable[..., Metrics]:
    """`eval_step` with the config's preprocessing and test-time augmentation bound."""
    return functools.partial(eval_step, **eval_options(config))
