"""The training loop: set up, train epoch by epoch, evaluate, checkpoint, finish.

`train_and_evaluate` reads top to bottom; each of its steps is a named function
below it. What a checkpoint carries besides the train state is a `Progress`.
The pieces live in their own modules: the steps in `steps`, optimizers in `optim`,
evaluation in `evaluate`, placement and compilation in `parallel`, checkpoints in
`checkpointing`, signals and provenance in `runtime`, progress and metrics in `monitor`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from fmnist_jax import (
    augment,
    checkpointing,
    evaluate,
    input_pipeline,
    models,
    monitor,
    optim,
    pages,
    parallel,
    runtime,
    seconds_since_process_start,
    steps,
)
from fmnist_jax.configuration import check_resume_config, validate_config

# Dispatches queued ahead of the host. Bounded: with many multi-device steps queued,
# XLA:CPU's in-process collectives can starve each other and deadlock.
MAX_DISPATCHES_IN_FLIGHT = 2
# steps_per_dispatch=0: the first dispatch runs PROBE_STEPS steps and is timed; later ones
# run the power of two of steps nearest DISPATCH_SECONDS of work (at most an epoch), so
# the bar moves and a signal is answered within seconds. Any length gives the same bits.
PROBE_STEPS = 16
DISPATCH_SECONDS = 1.0


@dataclasses.dataclass
class EpochSums:
    """Sums over the steps trained so far in one epoch, and its training seconds.

    Plain host floats rather than a clu.metrics collection: the per-step losses come
    back from the scanned dispatches as vectors and are summed once per epoch (or
    checkpoint) in float64, and the sums travel in the checkpoint's JSON, so a resumed
    run records the same train loss to the bit as one never interrupted.
    """

    loss: float = 0.0
    accuracy: float = 0.0
    seconds: float = 0.0

    def __add__(self, other: EpochSums) -> EpochSums:
        return EpochSums(self.loss + other.loss, self.accuracy + other.accuracy, self.seconds + other.seconds)


@dataclasses.dataclass
class Progress:
    """Everything besides the train state that an exact resume needs (JSON in the checkpoint)."""

    epoch_records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    partial: EpochSums | None = None  # The epoch in progress at a mid-epoch checkpoint.
    train_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> Progress:
        partial = EpochSums(**saved["partial"]) if saved.get("partial") else None
        return cls(list(saved["epoch_records"]), partial, saved["train_seconds"])


def scans_steps(par: parallel.DataParallel) -> bool:
    """Whether training runs as scanned chunks over a device-resident split (jit,
    one process), rather than step by step from host batches (pmap, multi-process)."""
    return par.mode == "jit" and jax.process_count() == 1


class Programs:
    """A run's compiled programs: scanned chunks of any length (compiled on first use)
    or the host-fed step, and the evaluation step."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        par: parallel.DataParallel,
        state_shapes: Any,
        num_train: int,
        train_rng: jax.Array,
    ):
        self.config, self.par, self.state_shapes, self.train_rng = config, par, state_shapes, train_rng
        self.data_shapes = (
            jax.ShapeDtypeStruct((num_train, *input_pipeline.IMAGE_SHAPE), jnp.uint8),
            jax.ShapeDtypeStruct((num_train,), jnp.int32),
        )
        self.scanned = scans_steps(par)
        self.train_step = steps.configured_train_step(config, par.axis_name, num_train // config.batch_size)
        self.eval_step = par.compile_eval_step(steps.configured_eval_step(config))
        self.host_step: Callable[..., Any] | None = None
        self.compile_seconds: list[float] = []
        self._chunks: dict[int, Callable[..., Any]] = {}

    def chunk(self, num_steps: int) -> Callable[..., Any]:
        if num_steps not in self._chunks:
            t = time.perf_counter()
            self._chunks[num_steps] = self.par.compile_train_chunk(
                self.train_step,
                self.state_shapes,
                self.data_shapes,
                num_steps,
                self.config.batch_size,
                self.train_rng,
            )
            self.compile_seconds.append(time.perf_counter() - t)
        return self._chunks[num_steps]

    def compile_host_step(self, state: Any) -> None:
        t = time.perf_counter()
        batch_shapes = (
            jax.ShapeDtypeStruct((self.config.batch_size, *input_pipeline.IMAGE_SHAPE), jnp.uint8),
            jax.ShapeDtypeStruct((self.config.batch_size,), jnp.int32),
        )
        self.host_step = self.par.compile_train_step(self.train_step, state, batch_shapes, self.train_rng)
        self.compile_seconds.append(time.perf_counter() - t)


@dataclasses.dataclass
class Run:
    """The state of one training run, passed between the loop's steps."""

    config: ml_collections.ConfigDict
    workdir: str
    guard: runtime.PreemptionGuard
    par: parallel.DataParallel
    programs: Programs
    model: nn.Module
    state: Any
    step: int  # Host copy of state.step.
    progress: Progress
    manager: Any
    splits: dict[str, input_pipeline.Split]
    device_data: Any
    train_rng: jax.Array
    log: monitor.MetricsLog
    num_params: int
    t_launch: float
    first_step_seconds: float = 0.0
    dispatch: int = 0  # Steps per dispatch; 0: sized by time once the first is timed.
    epoch_test: dict[str, Any] | None = None  # The last epoch's test evaluation (test_every_epoch).
    stopped_at_epoch: int | None = None
    saving_step: int | None = None  # The step of the checkpoint write last started.

    @property
    def is_main(self) -> bool:
        return jax.process_index() == 0

    @property
    def steps_per_epoch(self) -> int:
        return len(self.splits["train"]) // self.config.batch_size

    @property
    def total_steps(self) -> int:
        return self.config.num_epochs * self.steps_per_epoch

    def say(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any] | None:
    """Trains `config` for `config.num_epochs`, then evaluates test once.

    Resumes exactly from the newest intact checkpoint in `workdir/checkpoints`.
    Writes `config.json`, TensorBoard scalars, `metrics.jsonl` and `results.json`
    in `workdir` and returns the results dict; returns None when SIGTERM/SIGINT
    stopped the run (after saving a checkpoint to resume from). The signal
    handlers are in place from the start, so a signal during set-up or
    compilation also ends in a clean save after the first dispatch.
    """
    validate_config(config)
    t_launch = time.perf_counter()
    runtime.enable_compilation_cache(config.compilation_cache)
    with runtime.PreemptionGuard() as guard:
        run = set_up(config, workdir, guard, t_launch)
        try:
            stopped = train_epochs(run)
        except BaseException as e:
            # A failed or interrupted run still completes the save in flight (a state checked
            # finite): nothing half-written is left behind, no error from orbax's writer thread.
            # Not with a lost peer: a joint save cannot complete without it.
            if not parallel.is_lost_peer(e):
                with contextlib.suppress(Exception):  # The first error is the one to report.
                    run.manager.wait_until_finished()
            raise
        finish_saving(run)
    return None if stopped else finish(run)


# --- Set up: devices, state (initialised or restored), data, compiled programs. ---


def set_up(
    config: ml_collections.ConfigDict, workdir: str, guard: runtime.PreemptionGuard, t_launch: float
) -> Run:
    """Everything the loop needs. The first scanned program compiles from shapes alone
    in a background thread while the state is initialised or restored and the data
    loaded: seconds off the time to the first step."""
    par = parallel.DataParallel(config.parallelism)
    par.check_batch_size(config.batch_size)
    runtime.prepare_workdir(workdir)
    num_train = input_pipeline.num_train_examples(config.validation_fraction)
    steps_per_epoch = num_train // config.batch_size
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    # Placed once: resharding it inside every step would add a second program per step.
    train_rng = jax.device_put(train_rng, par.replicated)
    model, make_state = steps.train_state_fn(config, steps_per_epoch, axis_name=par.axis_name)
    programs = Programs(config, par, jax.eval_shape(make_state, init_rng), num_train, train_rng)
    # The first dispatch of a fresh run (a resume may start with another length).
    first = cut_dispatch(
        config.steps_per_dispatch or PROBE_STEPS, steps_per_epoch, 0, config.checkpoint_every_steps
    )
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        compiling = pool.submit(programs.chunk, first) if programs.scanned else None
        state, progress, manager = init_or_restore(config, workdir, make_state(init_rng), par)
        splits = input_pipeline.load_splits(config.data_dir, config.validation_fraction, config.split_seed)
        train = splits["train"] = augment.training_split(config, splits["train"])
        device_data = None
        if compiling is not None:
            device_data = par.put_dataset((train.images, train.labels.astype(np.int32)))
            compiling.result()
    if not programs.scanned:
        programs.compile_host_step(state)
    num_params = models.count_parameters({"params": state.params, "batch_stats": state.batch_stats})
    is_main = jax.process_index() == 0
    run = Run(
        config, workdir, guard, par, programs, model, state, int(par.single_copy(state).step), progress,
        manager, splits, device_data, train_rng,
        monitor.MetricsLog(workdir, enabled=is_main, records=progress.epoch_records), num_params, t_launch,
        dispatch=min(config.steps_per_dispatch, steps_per_epoch) if programs.scanned else 1,
    )  # fmt: skip
    announce(run, restored=run.step > 0)
    return run


def init_or_restore(
    config: ml_collections.ConfigDict, workdir: str, state: Any, par: parallel.DataParallel
) -> tuple[Any, Progress, Any]:
    """The newest intact checkpoint's state and progress, or the initial state; placed
    on the devices. Writes the resolved config.json (process 0)."""
    manager = checkpointing.create_manager(workdir)
    saved_config = os.path.join(workdir, "config.json")
    if manager.latest_step() is not None and os.path.isfile(saved_config):
        with open(saved_config) as f:
            check_resume_config(json.load(f), config, workdir)
    progress = Progress()
    restored = checkpointing.restore_latest_intact(manager, state, workdir, par.replicated)
    if restored is not None:
        state, saved = restored
        progress = Progress.from_json(saved)
    if jax.process_index() == 0:
        pages.write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))
    return par.put_state(state), progress, manager


def announce(run: Run, restored: bool) -> None:
    """The start-up lines: resume, model and data, compilation and time to the first step."""
    if restored:
        run.say(
            f"resumed from the checkpoint at step {run.step} in {checkpointing.checkpoint_dir(run.workdir)}"
        )
    splits, config = run.splits, run.config
    run.say(
        f"{config.name}: {run.num_params:,} parameters; train {len(splits['train'])}, validation "
        f"{len(splits['validation'])}, test {len(splits['test'])}; {run.steps_per_epoch} steps/epoch of "
        f"{config.batch_size}; {runtime.machine_description()}"
    )
    run.first_step_seconds = seconds_since_process_start()
    run.say(
        f"compiled the train step in {run.programs.compile_seconds[0]:.1f}s"
        f"{' (while loading)' if run.programs.scanned else ''}; "
        f"first step {run.first_step_seconds:.1f}s after the process started"
    )


# --- Train: epochs of dispatches; mid-epoch checkpoints; signals. ---


def train_epochs(run: Run) -> bool:
    """Trains to the last epoch; True when a signal stopped the run (after saving)."""
    while run.step < run.total_steps:
        epoch = run.step // run.steps_per_epoch + 1
        sums = train_epoch(run, epoch)
        if sums is None:
            return stop_for_signal(run, epoch)
        record = end_epoch(run, epoch, sums)
        if run.stopped_at_epoch:
            run.say(
                f"test accuracy reached config.stop_at_test_accuracy={run.config.stop_at_test_accuracy}: "
                f"stopped after epoch {epoch}"
            )
            return False
        if stop_requested(run) and run.step < run.total_steps:
            if run.manager.latest_step() != run.step:
                save(run, record["validation_accuracy"])
            return stop_for_signal(run, epoch)
    return False


def train_epoch(run: Run, epoch: int) -> EpochSums | None:
    """Trains the rest of `epoch`: its sums, or None when a signal stopped it mid-epoch
    (after a checkpoint of the steps done)."""
    steps_per_epoch = run.steps_per_epoch
    pos = run.step - (epoch - 1) * steps_per_epoch
    carried = run.progress.partial or EpochSums()
    batches = input_pipeline.epoch_batch_indices(
        len(run.splits["train"]), run.config.batch_size, run.config.seed, epoch
    )
    t0 = time.perf_counter()
    history: list[steps.Metrics] = []
    with monitor.progress_bar(steps_per_epoch, pos, f"epoch {epoch}", run.is_main) as bar:
        while pos < steps_per_epoch:
            k = dispatch_length(run, pos)
            history.append(dispatch(run, batches, pos, k, in_flight=history))
            pos += k
            bar.update(k)
            stop = stop_requested(run)
            if pos < steps_per_epoch and (stop or checkpoint_due(run)):
                run.progress.partial = carried + epoch_sums(history, run.step, epoch, t0)
                save(run)
                if stop:
                    return None
    return carried + epoch_sums(history, run.step, epoch, t0)


def dispatch_length(run: Run, pos: int) -> int:
    """Steps in the next dispatch: the configured or timed length (the probe's until timed)."""
    return cut_dispatch(
        run.dispatch or PROBE_STEPS, run.steps_per_epoch - pos, run.step, run.config.checkpoint_every_steps
    )


def cut_dispatch(length: int, steps_left: int, step: int, every: int) -> int:
    """`length` steps, cut at the epoch's end and at the next checkpoint every `every` steps."""
    k = min(length, steps_left)
    return min(k, every - step % every) if every > 0 else k


def dispatch(
    run: Run, batches: np.ndarray, pos: int, k: int, in_flight: list[steps.Metrics]
) -> steps.Metrics:
    """Runs steps pos..pos+k-1 of the epoch's `batches`; updates run.state and run.step."""
    if len(in_flight) >= MAX_DISPATCHES_IN_FLIGHT:
        jax.block_until_ready(in_flight[-MAX_DISPATCHES_IN_FLIGHT])
    if not run.programs.scanned:  # Step by step: the batch is gathered on the host.
        assert run.programs.host_step is not None
        idx = batches[pos][run.par.local_rows(run.config.batch_size)]
        train = run.splits["train"]
        batch = run.par.put_batch((train.images[idx], train.labels[idx]))
        run.state, metrics = run.programs.host_step(run.state, batch, run.train_rng)
    else:  # k steps in one program, batches gathered on the device.
        chunk = run.programs.chunk(k)
        indices = jax.device_put(batches[pos : pos + k], run.par.replicated)
        t = time.perf_counter()
        run.state, metrics = chunk(run.state, run.device_data, indices, run.train_rng)
        if run.dispatch == 0:  # The probe: time it, then size dispatches by time.
            jax.block_until_ready(metrics)
            run.dispatch = timed_dispatch_length((time.perf_counter() - t) / k, run.steps_per_epoch)
    run.step += k
    return metrics


def timed_dispatch_length(seconds_per_step: float, steps_per_epoch: int) -> int:
    """The power of two of steps nearest DISPATCH_SECONDS of work, at most an epoch."""
    steps_in_target = max(1.0, DISPATCH_SECONDS / max(seconds_per_step, 1e-9))
    return min(2 ** round(math.log2(steps_in_target)), steps_per_epoch)


def checkpoint_due(run: Run) -> bool:
    every = run.config.checkpoint_every_steps
    return every > 0 and run.step % every == 0


def epoch_sums(history: list[steps.Metrics], last_step: int, epoch: int, t0: float) -> EpochSums:
    """Sums of the per-step loss and accuracy in `history` (one transfer) and the seconds
    since `t0`. Raises FloatingPointError naming the first step whose loss is not finite."""
    host = jax.device_get(history)
    losses = np.concatenate([np.ravel(m["loss"]) for m in host])
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        raise FloatingPointError(
            f"train loss is {losses[bad[0]]} at step {last_step - len(losses) + int(bad[0]) + 1} "
            f"(epoch {epoch}); stopping without saving"
        )
    accuracy = np.concatenate([np.ravel(m["accuracy"]) for m in host])
    return EpochSums(
        float(np.sum(losses, dtype=np.float64)),
        float(np.sum(accuracy, dtype=np.float64)),
        time.perf_counter() - t0,
    )


def save(run: Run, validation_accuracy: float = checkpointing.NOT_EVALUATED) -> None:
    """Starts an asynchronous checkpoint of the state and progress; never of non-finite parameters."""
    single = run.par.single_copy(run.state)
    if not bool(jax.jit(parallel.all_finite)(single.params)):
        raise FloatingPointError(f"parameters are not finite at step {run.step}; not saving them")
    finish_saving(run)  # A failed earlier write stops the run here, naming its step.
    run.saving_step = run.step
    try:
        checkpointing.save(run.manager, single, run.progress.to_json(), validation_accuracy)
    except Exception as e:
        raise write_failed(run, e) from e


def finish_saving(run: Run) -> None:
    """Waits for the checkpoint being written; if its write failed (a full or lost disk),
    raises CheckpointError naming its step. Earlier checkpoints stay intact."""
    try:
        run.manager.wait_until_finished()
    except Exception as e:
        raise write_failed(run, e) from e


def write_failed(run: Run, error: Exception) -> checkpointing.CheckpointError:
    run.manager.reload()
    return checkpointing.CheckpointError(
        f"writing the checkpoint of step {run.saving_step} failed ({str(error).splitlines()[0][:300]}); "
        f"stopped. The newest intact checkpoint is step {run.manager.latest_step()}: fix the workdir "
        "and rerun to resume"
    )


def stop_requested(run: Run) -> bool:
    """Whether a signal asks the run to stop here. With several processes, any one's
    signal counts and all of them agree at the same step (an all-gather of the flags
    that every process makes at the same points), so all save the same step."""
    run.guard.check()  # A second Ctrl-C: no save, stop now.
    local = run.guard.signal_name is not None
    if jax.process_count() == 1:
        return local
    return bool(np.any(multihost_utils.process_allgather(np.int32(local))))


def stop_for_signal(run: Run, epoch: int) -> bool:
    """After the stop's checkpoint: wait for the write, one line from every process."""
    finish_saving(run)
    run.log.close()
    reason = run.guard.signal_name or "a signal to another process"
    who = f"process {jax.process_index()}: " if jax.process_count() > 1 else ""
    print(
        f"{who}caught {reason}: saved a checkpoint at step {run.step} (epoch {epoch}) "
        "and stopped; rerun the same command to resume",
        flush=True,
    )
    return True


# --- End of epoch: evaluate, record, checkpoint, log. ---


def end_epoch(run: Run, epoch: int, sums: EpochSums) -> dict[str, Any]:
    """Validation (and test, with test_every_epoch), the epoch's record, its checkpoint."""
    config = run.config
    run.progress.train_seconds += sums.seconds
    val = evaluate.evaluate(
        run.programs.eval_step, run.state, run.splits["validation"], config.eval_batch_size, run.par
    )
    record = epoch_record(run, epoch, sums, val)
    if config.test_every_epoch:
        record.update(test_after_epoch(run, epoch))
    run.progress.epoch_records.append(record)
    run.progress.partial = None
    if epoch % config.checkpoint_every_epochs == 0 or run.step == run.total_steps or run.stopped_at_epoch:
        save(run, val["accuracy"])
    run.log.write(run.step, record)
    test_note = f"  test acc {record['test_accuracy']:.4f}" if "test_accuracy" in record else ""
    run.say(
        f"epoch {epoch:3d}/{config.num_epochs}  train loss {record['train_loss']:.4f} "
        f"acc {record['train_accuracy']:.4f}  val loss {val['loss']:.4f} acc {val['accuracy']:.4f}"
        f"{test_note}  {record['images_per_second']:,.0f} img/s  {sums.seconds:.1f}s"
    )
    return record


def epoch_record(run: Run, epoch: int, sums: EpochSums, val: dict[str, Any]) -> dict[str, Any]:
    schedule = optim.learning_rate_schedule(run.config, run.steps_per_epoch)
    return {
        "epoch": epoch,
        "train_loss": sums.loss / run.steps_per_epoch,
        "train_accuracy": sums.accuracy / run.steps_per_epoch,
        "validation_loss": val["loss"],
        "validation_accuracy": val["accuracy"],
        "learning_rate": float(schedule(run.step - 1)),
        "images_per_second": run.steps_per_epoch * run.config.batch_size / sums.seconds,
        "epoch_seconds": sums.seconds,
    }


def test_after_epoch(run: Run, epoch: int) -> dict[str, Any]:
    """Time-to-accuracy runs: the test split after this epoch, and the early stop."""
    run.epoch_test = evaluate.evaluate(
        run.programs.eval_step, run.state, run.splits["test"], run.config.eval_batch_size, run.par
    )
    stop_at = run.config.stop_at_test_accuracy
    if stop_at and run.epoch_test["accuracy"] >= stop_at:
        run.stopped_at_epoch = epoch
    return {
        "test_loss": run.epoch_test["loss"],
        "test_accuracy": run.epoch_test["accuracy"],
        "seconds_since_process_start": seconds_since_process_start(),
    }


# --- Finish: the test split once, results.json, the report. ---


def finish(run: Run) -> dict[str, Any]:
    """Evaluates the final state on test (unless the last epoch already did) and
    writes results.json and the report."""
    config = run.config
    test = run.epoch_test or evaluate.evaluate(
        run.programs.eval_step, run.state, run.splits["test"], config.eval_batch_size, run.par
    )
    last = run.progress.epoch_records[-1]
    results = {
        "config": config.name,
        "num_params": run.num_params,
        "num_epochs": config.num_epochs,
        "batch_size": config.batch_size,
        "step": run.step,
        "test": test,
        "validation": {"loss": last["validation_loss"], "accuracy": last["validation_accuracy"]},
        "compile_seconds": run.programs.compile_seconds[0],
        "first_step_seconds": run.first_step_seconds,
        "stopped_at_epoch": run.stopped_at_epoch,
        "train_seconds": run.progress.train_seconds,
        "wall_seconds": time.perf_counter() - run.t_launch,
        **runtime.provenance(),
        "jax_version": jax.__version__,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if run.is_main:
        pages.write_json(os.path.join(run.workdir, "results.json"), results)
        if config.write_report:
            write_report(run, results)
    run.log.close()
    run.say(
        f"test loss {test['loss']:.4f}  test accuracy {test['accuracy']:.4f}  "
        f"({results['wall_seconds']:.0f}s wall, {run.progress.train_seconds:.0f}s training)"
    )
    return results


def write_report(run: Run, results: dict[str, Any]) -> None:
    """The figures and report.html of a finished run (process 0 only)."""
    from fmnist_jax import report

    # Host copies: process 0 computes alone here, so no global (multi-process) arrays.
    state = run.par.single_copy(run.state)
    variables = jax.device_get(steps.model_variables(state, steps.eval_params(state)))
    options = steps.eval_options(run.config)

    @jax.jit
    def predict(images: jax.Array) -> jax.Array:
        return jnp.argmax(steps.eval_logits(state, images, **options), -1)

    splits = run.splits
    out = report.write_report(
        run.workdir,
        config=run.config,
        results=results,
        records=run.progress.epoch_records,
        train_images=splits["train"].images,
        train_labels=splits["train"].labels,
        test_images=splits["test"].images,
        test_labels=splits["test"].labels,
        predict_fn=lambda images: np.asarray(predict(images)),
        model=run.model,
        variables=variables,
        tensorboard_writer=run.log.writer,
    )
    print(f"figures and report.html in {out}", flush=True)
