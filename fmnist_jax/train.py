"""Train state, optimizer, jitted train/eval steps and the training loop."""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from fmnist_jax import (
    CLASS_NAMES,
    NUM_CLASSES,
    checkpointing,
    input_pipeline,
    models,
    parallel,
    seconds_since_process_start,
)
from fmnist_jax.configuration import validate_config

Metrics = dict[str, jax.Array]
# Steps dispatched ahead of the host. Bounded: with many multi-device steps queued,
# XLA:CPU's in-process collectives can starve each other and deadlock.
MAX_STEPS_IN_FLIGHT = 2


class TrainState(train_state.TrainState):
    """Params and optimizer state (from flax) plus batch-norm statistics."""

    batch_stats: Any = None


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
    if config.schedule == "one_cycle":
        return optax.cosine_onecycle_schedule(total, lr, pct_start=warmup / total)
    raise ValueError(f"config.schedule={config.schedule!r} is unknown")


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam (default), AdamW or SGD with momentum, driven by the configured schedule."""
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
    if config.optimizer == "sgd":
        return optax.sgd(learning_rate, momentum=config.momentum, nesterov=config.nesterov)
    raise ValueError(f"config.optimizer={config.optimizer!r} is unknown")


def train_state_fn(
    config: ml_collections.ConfigDict, steps_per_epoch: int, axis_name: str | None = None
) -> tuple[nn.Module, Callable[[jax.Array], TrainState]]:
    """The model and a function rng -> initial TrainState (one copy).

    Every state it makes shares one model and one optimizer, so states made by
    it, or their `jax.eval_shape`, fit the same compiled programs.
    `axis_name`: the pmap axis over which batch norm averages its statistics.
    """
    model = models.create_model(
        config.model, NUM_CLASSES, axis_name=axis_name, compute_dtype=config.get("compute_dtype", "float32")
    )
    tx = create_optimizer(config, steps_per_epoch)

    def make_state(rng: jax.Array) -> TrainState:
        variables = models.init_variables(model, rng)
        state = TrainState.create(
            apply_fn=model.apply,
            params=variables["params"],
            tx=tx,
            batch_stats=variables.get("batch_stats", {}),
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


def _variables(state: TrainState, params: Any) -> dict[str, Any]:
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
) -> tuple[TrainState, Metrics]:
    """One optimizer step on a batch of (uint8 images, int labels).

    Dropout and augmentation draw from `rng` folded with the step number, so a
    step's randomness depends only on (rng, step). Under `jax.pmap`, `axis_name`
    names the device axis: gradients and metrics are averaged over it.
    """
    images, labels = batch
    step_rng = jax.random.fold_in(rng, state.step)
    if axis_name is not None:
        step_rng = jax.random.fold_in(step_rng, jax.lax.axis_index(axis_name))
    dropout_rng, flip_rng = jax.random.split(step_rng)
    x = preprocess(images, normalize)
    if augment_flip:
        flip = jax.random.bernoulli(flip_rng, 0.5, (x.shape[0], 1, 1, 1))
        x = jnp.where(flip, x[:, :, ::-1, :], x)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, NUM_CLASSES), label_smoothing)

    def loss_fn(params: Any) -> tuple[jax.Array, tuple[jax.Array, Any]]:
        logits, updates = state.apply_fn(
            _variables(state, params),
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
    return state, metrics


def eval_step(
    state: TrainState,
    batch: tuple[jax.Array, jax.Array, jax.Array],
    *,
    normalize: bool = True,
) -> Metrics:
    """Summed loss and the confusion matrix of one padded batch; mask 0 marks padding."""
    images, labels, mask = batch
    logits = state.apply_fn(_variables(state, state.params), preprocess(images, normalize), train=False)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    predicted = jnp.argmax(logits, -1)
    confusion = jnp.einsum(
        "n,ni,nj->ij",
        mask,
        jax.nn.one_hot(labels, NUM_CLASSES),
        jax.nn.one_hot(predicted, NUM_CLASSES),
    )
    return {"loss_sum": jnp.sum(loss * mask), "confusion": confusion}


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


def machine_description() -> str:
    """A short description of the JAX devices and host this runs on."""
    devices = jax.devices()
    kind = devices[0].device_kind
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{len(devices)}x {kind} ({jax.default_backend()}), host {cpu}, {os.cpu_count()} cores"


class ProgressBar:
    """A one-line progress bar with ETA, drawn only on an interactive terminal."""

    def __init__(self, total: int, stream: Any = sys.stderr, enabled: bool | None = None):
        self.total = total
        self.stream = stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self.start = time.perf_counter()
        self.every = max(1, total // 50)

    def update(self, done: int, sync: Any = None) -> None:
        if not self.enabled or (done % self.every and done != self.total):
            return
        if sync is not None:
            jax.block_until_ready(sync)  # So the ETA reflects finished work.
        elapsed = time.perf_counter() - self.start
        eta = elapsed / done * (self.total - done)
        filled = int(30 * done / self.total)
        self.stream.write(f"\r  [{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} ETA {eta:5.1f}s")
        if done == self.total:
            self.stream.write("\r" + " " * 70 + "\r")
        self.stream.flush()


class MetricsLog:
    """Writes per-epoch scalars to TensorBoard (clu) and to `metrics.jsonl`.

    `metrics.jsonl` is rewritten from `records` (the epochs a resumed checkpoint
    holds) so that it always agrees with the checkpoint a run continues from.
    """

    def __init__(self, workdir: str, enabled: bool = True, records: list[dict[str, Any]] | None = None):
        self.enabled = enabled
        if not enabled:
            return
        self.writer: Any = None
        try:  # clu's SummaryWriter writes through TensorFlow.
            from clu import metric_writers

            self.writer = metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError as e:
            print(f"TensorBoard summaries are off ({e}); metrics.jsonl is still written.", file=sys.stderr)
        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "w")  # noqa: SIM115 (closed in close())
        for record in records or []:
            self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            self.writer.write_scalars(step, dict(scalars))
        self.jsonl.write(json.dumps(dict(scalars)) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            if self.writer is not None:
                self.writer.close()
            self.jsonl.close()


def _write_json(path: str, payload: Any) -> None:
    """Writes JSON atomically: a reader never sees a half-written file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _metric_sums(history: list[Metrics]) -> dict[str, float]:
    """Sums of per-step metrics (one device-to-host transfer). Each entry of
    `history` holds one step's scalars or a scanned chunk's per-step vectors."""
    if not history:
        return {"loss": 0.0, "accuracy": 0.0}
    host = jax.device_get(history)
    return {
        k: float(np.sum(np.concatenate([np.ravel(m[k]) for m in host]), dtype=np.float64)) for k in host[0]
    }


def _check_finite_losses(history: list[Metrics], last_step: int, epoch: int) -> None:
    """Raises FloatingPointError naming the first step of `history` (ending at
    `last_step`) whose loss is NaN or inf."""
    losses = np.concatenate([np.ravel(x) for x in jax.device_get([m["loss"] for m in history])])
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        raise FloatingPointError(
            f"train loss is {losses[bad[0]]} at step {last_step - len(losses) + int(bad[0]) + 1} "
            f"(epoch {epoch}); stopping without saving"
        )


class PreemptionGuard:
    """Turns SIGTERM and the first SIGINT into a flag the training loop polls between steps."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # A second Ctrl-C stops at once.
        self.signal_name = signal.Signals(signum).name
        # os.write, not print: a handler may interrupt a print to the same stream.
        os.write(2, f"{self.signal_name}: saving at the next step boundary, then stopping".encode())
        os.write(2, b" (Ctrl-C again stops at once, without saving)\n")

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _train_step_fn(config: ml_collections.ConfigDict, par: parallel.DataParallel) -> Callable[..., Any]:
    return functools.partial(
        train_step,
        normalize=config.normalize,
        augment_flip=config.augment_flip,
        label_smoothing=config.label_smoothing,
        axis_name=par.axis_name,
    )


def scans_steps(par: parallel.DataParallel) -> bool:
    """Whether training runs as scanned chunks over a device-resident split (jit,
    one process), rather than step by step from host batches (pmap, multi-process)."""
    return par.mode == "jit" and jax.process_count() == 1


def steps_per_dispatch(
    config: ml_collections.ConfigDict, steps_per_epoch: int, par: parallel.DataParallel
) -> int:
    """Training steps per host dispatch: `config.steps_per_dispatch`, at most one
    epoch; 0 means a whole epoch. Always 1 where steps are not scanned."""
    if not scans_steps(par):
        return 1
    n = config.get("steps_per_dispatch", 1)
    return steps_per_epoch if n == 0 else min(n, steps_per_epoch)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any] | None:
    """Trains `config` for `config.num_epochs`, then evaluates test once.

    Resumes exactly from the newest intact checkpoint in `workdir/checkpoints`.
    Writes `config.json`, TensorBoard scalars, `metrics.jsonl` and `results.json`
    in `workdir` and returns the results dict; returns None when SIGTERM/SIGINT
    stopped the run (after saving a checkpoint to resume from). The signal
    handlers are in place from the start, so a signal during set-up or
    compilation also ends in a clean save after the first step.
    """
    with PreemptionGuard() as guard:
        return _train_and_evaluate(config, workdir, guard)


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, guard: PreemptionGuard
) -> dict[str, Any] | None:
    validate_config(config)
    t_launch = time.perf_counter()
    is_main = jax.process_index() == 0
    say: Callable[[str], None] = functools.partial(print, flush=True) if is_main else (lambda s: None)

    par = parallel.DataParallel(config.parallelism)
    par.check_batch_size(config.batch_size)
    os.makedirs(workdir, exist_ok=True)
    num_train = input_pipeline.num_train_examples(config.validation_fraction)
    steps_per_epoch = num_train // config.batch_size
    total_steps = config.num_epochs * steps_per_epoch
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    # Placed once: resharding it inside every step would add a second program per step.
    train_rng = jax.device_put(train_rng, par.replicated)

    # The scanned path's first program compiles from shapes alone in a background
    # thread while the state is initialised or restored and the data loaded: seconds
    # off the time to the first step. Other chunk lengths (resume, checkpoints)
    # compile on demand; the host-fed step compiles once the state is placed.
    scanned = scans_steps(par)
    dispatch = steps_per_dispatch(config, steps_per_epoch, par)
    image_shape = input_pipeline.IMAGE_SHAPE
    data_shapes = (
        jax.ShapeDtypeStruct((num_train, *image_shape), jnp.uint8),
        jax.ShapeDtypeStruct((num_train,), jnp.int32),
    )
    model, make_state = train_state_fn(config, steps_per_epoch, axis_name=par.axis_name)
    state_shapes = jax.eval_shape(make_state, init_rng)
    chunk_fns: dict[int, Any] = {}
    compile_times: list[float] = []

    def chunk_fn(num_steps: int) -> Callable[..., Any]:
        if num_steps not in chunk_fns:
            t = time.perf_counter()
            chunk_fns[num_steps] = par.compile_train_chunk(
                _train_step_fn(config, par),
                state_shapes,
                data_shapes,
                num_steps,
                config.batch_size,
                train_rng,
            )
            compile_times.append(time.perf_counter() - t)
        return chunk_fns[num_steps]

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        # The first dispatch's length (mid-epoch checkpoints may cut it short).
        every = config.checkpoint_every_steps
        first = min(dispatch, every) if every > 0 else dispatch
        compiling = pool.submit(chunk_fn, first) if scanned else None
        state = make_state(init_rng)
        num_params = models.count_parameters({"params": state.params, "batch_stats": state.batch_stats})

        manager = checkpointing.create_manager(workdir)
        progress: dict[str, Any] = {"epoch_records": [], "partial": None, "train_seconds": 0.0}
        restored = checkpointing.restore_latest_intact(manager, state, workdir, par.replicated)
        if restored is not None:
            state, progress = restored
            say(
                f"resumed from the checkpoint at step {int(state.step)} in "
                f"{checkpointing.checkpoint_dir(workdir)}"
            )
        state = par.put_state(state)
        if is_main:
            _write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))
        splits = input_pipeline.load_splits(config.data_dir, config.validation_fraction, config.split_seed)
        train_split, val_split, test_split = splits["train"], splits["validation"], splits["test"]
        say(
            f"{config.name}: {num_params:,} parameters; train {len(train_split)}, validation "
            f"{len(val_split)}, test {len(test_split)}; {steps_per_epoch} steps/epoch of "
            f"{config.batch_size}; {machine_description()}"
        )
        if compiling is not None:
            device_data = par.put_dataset((train_split.images, train_split.labels.astype(np.int32)))
            compiling.result()
    if not scanned:
        t = time.perf_counter()
        step_fn = par.compile_train_step(
            _train_step_fn(config, par),
            state,
            (
                jax.ShapeDtypeStruct((config.batch_size, *image_shape), jnp.uint8),
                jax.ShapeDtypeStruct((config.batch_size,), jnp.int32),
            ),
            train_rng,
        )
        compile_times.append(time.perf_counter() - t)
    eval_fn = par.compile_eval_step(functools.partial(eval_step, normalize=config.normalize))
    rows = par.local_rows(config.batch_size)
    compile_seconds = compile_times[0]
    first_step_seconds = seconds_since_process_start()
    say(
        f"compiled the train step in {compile_seconds:.1f}s{' (while loading)' if scanned else ''}; "
        f"first step {first_step_seconds:.1f}s after the process started"
    )
    stop_at = config.get("stop_at_test_accuracy", 0.0)
    stopped_at_epoch = None
    epoch_test: dict[str, Any] | None = (
        None  # The test evaluation after the last epoch, when test_every_epoch.
    )

    log = MetricsLog(workdir, enabled=is_main, records=progress["epoch_records"])
    schedule = learning_rate_schedule(config, steps_per_epoch)

    def save(validation_accuracy: float = checkpointing.NOT_EVALUATED) -> None:
        single = par.single_copy(state)
        if not bool(jax.jit(parallel.all_finite)(single.params)):
            raise FloatingPointError(f"parameters are not finite at step {step}; not saving them")
        checkpointing.save(manager, single, progress, validation_accuracy)

    def stop_for_signal(epoch: int) -> None:
        manager.wait_until_finished()
        log.close()
        say(
            f"caught {guard.signal_name}: saved a checkpoint at step {step} (epoch {epoch}) "
            "and stopped; rerun the same command to resume"
        )

    try:
        step = int(par.single_copy(state).step)
        while step < total_steps:
            epoch, offset = divmod(step, steps_per_epoch)
            epoch += 1
            carried = progress["partial"] or {"loss": 0.0, "accuracy": 0.0, "seconds": 0.0}
            bar = ProgressBar(steps_per_epoch, enabled=None if is_main else False)
            t0 = time.perf_counter()
            history: list[Metrics] = []
            batches = input_pipeline.epoch_batch_indices(
                len(train_split), config.batch_size, config.seed, epoch
            )
            every = config.checkpoint_every_steps
            pos = offset  # Steps done in this epoch.
            while pos < steps_per_epoch:
                if len(history) >= MAX_STEPS_IN_FLIGHT:
                    jax.block_until_ready(history[-MAX_STEPS_IN_FLIGHT])
                # Each dispatch ends at the epoch's end and at mid-epoch checkpoints.
                k = min(dispatch, steps_per_epoch - pos, every - step % every if every > 0 else dispatch)
                if not scanned:  # Step by step: the batch is gathered on the host.
                    idx = batches[pos][rows]
                    batch = par.put_batch((train_split.images[idx], train_split.labels[idx]))
                    state, metrics = step_fn(state, batch, train_rng)
                else:  # k steps in one program, batches gathered on the device.
                    indices = jax.device_put(batches[pos : pos + k], par.replicated)
                    state, metrics = chunk_fn(k)(state, device_data, indices, train_rng)
                history.append(metrics)
                step += k
                pos += k
                bar.update(pos, sync=metrics)
                if pos == steps_per_epoch:
                    break  # The epoch-end branch below saves, and handles signals.
                if guard.signal_name or (every > 0 and step % every == 0):
                    _check_finite_losses(history, step, epoch)
                    sums = _metric_sums(history)
                    progress["partial"] = {
                        "loss": carried["loss"] + sums["loss"],
                        "accuracy": carried["accuracy"] + sums["accuracy"],
                        "seconds": carried["seconds"] + time.perf_counter() - t0,
                    }
                    save()
                    if guard.signal_name:
                        stop_for_signal(epoch)
                        return None
            _check_finite_losses(history, step, epoch)
            sums = _metric_sums(history)
            epoch_seconds = carried["seconds"] + time.perf_counter() - t0
            progress["train_seconds"] += epoch_seconds
            val = evaluate(eval_fn, state, val_split, config.eval_batch_size, par)
            record = {
                "epoch": epoch,
                "train_loss": (carried["loss"] + sums["loss"]) / steps_per_epoch,
                "train_accuracy": (carried["accuracy"] + sums["accuracy"]) / steps_per_epoch,
                "validation_loss": val["loss"],
                "validation_accuracy": val["accuracy"],
                "learning_rate": float(schedule(step - 1)),
                "images_per_second": steps_per_epoch * config.batch_size / epoch_seconds,
                "epoch_seconds": epoch_seconds,
            }
            if config.get("test_every_epoch", False):
                epoch_test = evaluate(eval_fn, state, test_split, config.eval_batch_size, par)
                record.update(
                    test_loss=epoch_test["loss"],
                    test_accuracy=epoch_test["accuracy"],
                    seconds_since_process_start=seconds_since_process_start(),
                )
                if stop_at and epoch_test["accuracy"] >= stop_at:
                    stopped_at_epoch = epoch
            progress["epoch_records"].append(record)
            progress["partial"] = None
            if epoch % config.checkpoint_every_epochs == 0 or step == total_steps or stopped_at_epoch:
                save(val["accuracy"])
            log.write(step, record)
            test_note = f"  test acc {record['test_accuracy']:.4f}" if "test_accuracy" in record else ""
            say(
                f"epoch {epoch:3d}/{config.num_epochs}  train loss {record['train_loss']:.4f} "
                f"acc {record['train_accuracy']:.4f}  val loss {val['loss']:.4f} acc {val['accuracy']:.4f}"
                f"{test_note}  {record['images_per_second']:,.0f} img/s  {epoch_seconds:.1f}s"
            )
            if stopped_at_epoch:
                say(
                    f"test accuracy reached config.stop_at_test_accuracy={stop_at}: stopped after epoch {epoch}"
                )
                break
            if guard.signal_name and step < total_steps:
                if manager.latest_step() != step:
                    save(val["accuracy"])
                stop_for_signal(epoch)
                return None
    except BaseException:
        # A failed or interrupted run still completes the save in flight (a state checked
        # finite): nothing half-written is left behind, no error from orbax's writer thread.
        manager.wait_until_finished()
        raise
    manager.wait_until_finished()

    # The final state's test evaluation, unless the last epoch already ran it.
    test = epoch_test or evaluate(eval_fn, state, test_split, config.eval_batch_size, par)
    last = progress["epoch_records"][-1]
    results = {
        "config": config.name,
        "num_params": num_params,
        "num_epochs": config.num_epochs,
        "batch_size": config.batch_size,
        "step": step,
        "test": test,
        "validation": {"loss": last["validation_loss"], "accuracy": last["validation_accuracy"]},
        "compile_seconds": compile_seconds,
        "first_step_seconds": first_step_seconds,
        "stopped_at_epoch": stopped_at_epoch,
        "train_seconds": progress["train_seconds"],
        "wall_seconds": time.perf_counter() - t_launch,
        "machine": machine_description(),
        "jax_version": jax.__version__,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if is_main:
        _write_json(os.path.join(workdir, "results.json"), results)
        if config.write_report:
            _write_report(
                workdir,
                config,
                results,
                progress["epoch_records"],
                splits,
                model,
                par.single_copy(state),
                log,
            )
    log.close()
    say(
        f"test loss {test['loss']:.4f}  test accuracy {test['accuracy']:.4f}  "
        f"({results['wall_seconds']:.0f}s wall, {progress['train_seconds']:.0f}s training)"
    )
    return results


def _write_report(
    workdir: str,
    config: ml_collections.ConfigDict,
    results: dict[str, Any],
    records: list[dict[str, Any]],
    splits: dict[str, input_pipeline.Split],
    model: nn.Module,
    state: TrainState,
    log: MetricsLog,
) -> None:
    """The figures and report.html of a finished run (process 0 only)."""
    from fmnist_jax import report

    # Host copies: process 0 computes alone here, so no global (multi-process) arrays.
    variables = jax.device_get(_variables(state, state.params))

    @jax.jit
    def predict(images: jax.Array) -> jax.Array:
        return jnp.argmax(state.apply_fn(variables, preprocess(images, config.normalize), train=False), -1)

    out = report.write_report(
        workdir,
        config=config,
        results=results,
        records=records,
        train_images=splits["train"].images,
        train_labels=splits["train"].labels,
        test_images=splits["test"].images,
        test_labels=splits["test"].labels,
        predict_fn=lambda images: np.asarray(predict(images)),
        model=model,
        variables=variables,
        tensorboard_writer=log.writer,
    )
    print(f"figures and report.html in {out}", flush=True)


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a training run saved in `workdir/config.json`."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise checkpointing.CheckpointError(
            f"{workdir!r} holds no config.json: not the workdir of a training run"
            + ("" if os.path.isdir(workdir) else " (it does not exist)")
        )
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def evaluate_checkpoint(workdir: str, which: str = "best") -> dict[str, Any]:
    """Restores checkpoint `which` ('best', 'latest' or a step) onto this process's
    devices, evaluates validation and test, and writes `workdir/eval_<step>.json`."""
    config = load_workdir_config(workdir)
    if not os.path.isdir(checkpointing.checkpoint_dir(workdir)):
        raise checkpointing.CheckpointError(f"no checkpoints in {checkpointing.checkpoint_dir(workdir)}")
    manager = checkpointing.create_manager(workdir, create=False)
    step = checkpointing.select_step(manager, which)
    splits = input_pipeline.load_splits(config.data_dir, config.validation_fraction, config.split_seed)
    par = parallel.DataParallel("jit")  # Whatever devices this process has.
    _, template = create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch=1)
    state, _ = checkpointing.restore(manager, step, template, par.replicated)
    eval_fn = par.compile_eval_step(functools.partial(eval_step, normalize=config.normalize))
    report = {
        "config": config.name,
        "checkpoint": which,
        "step": step,
        "validation": evaluate(eval_fn, state, splits["validation"], config.eval_batch_size, par),
        "test": evaluate(eval_fn, state, splits["test"], config.eval_batch_size, par),
        "machine": machine_description(),
    }
    if jax.process_index() == 0:
        _write_json(os.path.join(workdir, f"eval_{step}.json"), report)
    print(
        f"{config.name} checkpoint {step} ({which}): validation accuracy "
        f"{report['validation']['accuracy']:.4f}, test loss {report['test']['loss']:.4f} "
        f"accuracy {report['test']['accuracy']:.4f} -> {os.path.join(workdir, f'eval_{step}.json')}",
        flush=True,
    )
    return report
