"""Our side of the benchmark: the scanned training step timed on real and synthetic
input, its per-operation profile, the CPU ablation, and time to accuracy."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from fmnist_jax import evaluate, input_pipeline, steps
from fmnist_jax.benchmark import limits
from fmnist_jax.benchmark.common import TARGET_ACCURACY, load_config, machine, peak_rss_mib, timed_steps

WINDOWS = 5  # Timed windows per JAX child for the real and the synthetic input.


def compile_synthetic_chunk(par: Any, step: Any, state: Any, fixed: Any, num_steps: int, rng: Any) -> Any:
    """`compile_train_chunk`'s program on synthetic input: `num_steps` applications
    of `step` to one fixed device-resident batch, no rows read from a split.

    The barrier ties the batch to the loop, as the gathered batch is tied in
    `compile_train_chunk`, so nothing in the step is hoisted out of the scan: the
    two programs differ only by the gather. Takes (state, fixed, rng).
    """
    import jax

    def chunk(state: Any, fixed: Any, rng: Any) -> Any:
        def body(state: Any, _: Any) -> Any:
            b, _step = jax.lax.optimization_barrier((fixed, state.step))
            return step(state, b, rng)

        return jax.lax.scan(body, state, None, length=num_steps)

    jitted = jax.jit(
        chunk,
        in_shardings=(par.replicated, par.batch_sharding, par.replicated),
        out_shardings=(par.replicated, par.replicated),
        donate_argnums=0,
    )
    return jitted.lower(state, fixed, rng).compile()


def jax_setup(name: str) -> tuple[Any, ...]:
    """(config, par, splits, state, data, step, rng) for timing config `name`'s
    scanned training on the device-resident training split."""
    import jax
    import numpy as np

    from fmnist_jax import parallel

    config = load_config(name)
    par = parallel.DataParallel("jit")
    splits = input_pipeline.load_splits(config.data_dir, config.validation_fraction, config.split_seed)
    split = splits["train"]
    steps_per_epoch = len(split) // config.batch_size
    _, state = steps.create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch)
    data = par.put_dataset((split.images, split.labels.astype(np.int32)))
    step = steps.configured_train_step(config, par.axis_name, steps_per_epoch)
    return config, par, splits, par.put_state(state), data, step, jax.random.PRNGKey(1)


# ------------------------------------------------------------------- profile


def _op_paths(chunk: Any) -> dict[str, str]:
    """Each operation of the compiled program and what it computes (its jax op path)."""
    import re

    what: dict[str, str] = {}
    for line in chunk.as_text().splitlines():
        found, op_name = re.search(r"%([\w.\-]+) = ", line), re.search(r'op_name="([^"]*)"', line)
        if found:
            what[found.group(1)] = "/".join(op_name.group(1).split("/")[-2:]) if op_name else "-"
    return what


def _traced_run(run: Callable[[], Any]) -> tuple[float, list[dict[str, Any]]]:
    """(wall seconds, trace events) of one call of `run` under the JAX profiler."""
    import gzip
    import tempfile

    import jax

    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            t = time.perf_counter()
            jax.block_until_ready(run())
            wall = time.perf_counter() - t
        trace_files = [os.path.join(d, f) for d, _, fs in os.walk(tmp) for f in fs if f.endswith(".json.gz")]
        if not trace_files:
            raise RuntimeError("the JAX profiler wrote no trace")
        with gzip.open(trace_files[0]) as f:
            events = json.load(f)
    return wall, events["traceEvents"] if isinstance(events, dict) else events


def _op_table(header: str, totals: dict[str, float], what: dict[str, str], per_step_us: float, n: int) -> str:
    """The operations over 1 % of the step, longest first, then the rest in one row."""
    lines = [
        header,
        "",
        "| XLA operation | computes | us per step | share of the step |",
        "|---|---|---|---|",
    ]
    for op, us in sorted(totals.items(), key=lambda kv: -kv[1]):
        us /= n
        if us >= 0.01 * per_step_us:
            lines.append(f"| `{op}` | {what[op]} | {us:,.1f} | {us / per_step_us:.1%} |")
    small = [v / n for v in totals.values() if v / n < 0.01 * per_step_us]
    lines.append(
        f"| {len(small)} others, under 1 % each | | {sum(small):,.1f} | {sum(small) / per_step_us:.1%} |"
    )
    return "\n".join(lines)


def profile_ops(name: str, num_steps: int = 200) -> str:
    """Where a scanned training step's time goes: one traced dispatch of
    `num_steps` steps (after a warm-up one), each XLA operation's time per step
    (summed over the threads that ran it) as a markdown table."""
    import jax

    config, par, splits, state, data, step, rng = jax_setup(name)
    batch = config.batch_size
    num_steps = min(num_steps, len(splits["train"]) // batch)
    chunk = par.compile_train_chunk(step, state, data, num_steps, batch, rng)
    indices = input_pipeline.epoch_batch_indices(len(splits["train"]), batch, config.seed, 1)
    indices = jax.device_put(indices[:num_steps])
    state, metrics = chunk(state, data, indices, rng)
    jax.block_until_ready(metrics)
    what = _op_paths(chunk)
    wall, events = _traced_run(lambda: chunk(state, data, indices, rng)[1])
    totals: dict[str, float] = {}
    for e in events:
        if e.get("ph") == "X" and e.get("name") in what:
            totals[e["name"]] = totals.get(e["name"], 0.0) + e.get("dur", 0.0)
    if not totals:
        raise RuntimeError(
            f"no operation of the compiled program is named in the trace ({jax.default_backend()})"
        )
    per_step_us = wall / num_steps * 1e6
    # Loops hold other operations: only the rest counts as timed.
    timed = sum(us for op, us in totals.items() if not what[op].endswith("/while"))
    if (rest := per_step_us * num_steps - timed) > 0:
        totals[UNATTRIBUTED] = rest
        what[UNATTRIBUTED] = "the rest of the wall time: untraced work (XLA:CPU's convolutions) and idle time"
    header = (
        f"`{name}` (batch {batch}): {num_steps} scanned steps traced, {per_step_us:,.0f} us per step "
        f"wall ({batch / per_step_us * 1e6:,.0f} img/s under the profiler), {machine()}."
    )
    table = _op_table(header, totals, what, per_step_us, num_steps)
    convs = conv_shapes(config, batch)
    return table + ("\n\n" + conv_table(convs, config.compute_dtype) if convs else "")


# XLA:CPU's convolutions run on its thread pool, outside the operations the trace times.
UNATTRIBUTED = "(unattributed)"


ConvShape = tuple[tuple[int, ...], tuple[int, ...], str]  # (input shape, kernel shape, padding)


def conv_shapes(config: Any, batch: int) -> list[ConvShape]:
    """(input shape, kernel shape, padding) of each convolution of a CNN config, in order."""
    from fmnist_jax.benchmark.common import network

    net = network(config)
    shapes: list[ConvShape] = []
    size, channels = 28, 1
    for block in net.conv:
        k = block.kernel_size
        shapes.append(((batch, size, size, channels), (k, k, channels, block.features), block.padding))
        size = size if block.padding == "SAME" else size - k + 1
        size = size // 2 if net.pool else size
        channels = block.features
    return shapes


def time_conv(
    x_shape: tuple[int, ...],
    k_shape: tuple[int, ...],
    padding: str,
    dtype: str = "float32",
    seconds: float = 1.0,
) -> float:
    """Seconds per forward + backward of one training convolution (ops.conv_general_dilated),
    the input's gradient only past the first layer (one input channel), as in training."""
    import jax
    import jax.numpy as jnp

    from fmnist_jax import ops

    def loss(x: Any, k: Any, r: Any) -> Any:
        return jnp.sum(ops.conv_general_dilated(x, k, (1, 1), padding) * r)

    wrt = (1,) if x_shape[-1] == 1 else (0, 1)
    grad = jax.jit(jax.grad(loss, argnums=wrt))
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x, k = jax.random.normal(keys[0], x_shape, dtype), jax.random.normal(keys[1], k_shape, dtype)
    r = jax.random.normal(
        keys[2], jax.eval_shape(lambda: ops.conv_general_dilated(x, k, (1, 1), padding)).shape, dtype
    )
    jax.block_until_ready(grad(x, k, r))
    return timed_rate(lambda: grad(x, k, r), seconds)


def timed_rate(run: Callable[[], Any], seconds: float) -> float:
    """Seconds per call of `run`, over at least `seconds` of back-to-back calls."""
    import jax

    n, start = 0, time.perf_counter()
    while True:
        jax.block_until_ready(run())
        n += 1
        if (elapsed := time.perf_counter() - start) >= seconds:
            return elapsed / n


def conv_table(shapes: list[ConvShape], dtype: str = "float32") -> str:
    """Each convolution's forward + backward timed alone, in ms and GFLOP/s."""
    lines = [
        f"Each convolution alone ({dtype}, forward + backward, jitted, as in training):",
        "",
        "| input | kernel | ms | GFLOP/s |",
        "|---|---|---|---|",
    ]
    for x_shape, k_shape, padding in shapes:
        seconds = time_conv(x_shape, k_shape, padding, dtype)
        passes = 2 if x_shape[-1] == 1 else 3
        flops = passes * limits.conv_flops(x_shape, k_shape, padding)
        shown = "x".join(map(str, x_shape)), "x".join(map(str, k_shape))
        lines.append(f"| {shown[0]} | {shown[1]} | {seconds * 1e3:.2f} | {flops / seconds / 1e9:.0f} |")
    return "\n".join(lines)


# -------------------------------------------------------------------- speed


class _Windows:
    """Times dispatches that each map the training state to (state, metrics),
    carrying the (donated) state from one to the next."""

    def __init__(self, state: Any, batch: int) -> None:
        self.state, self.batch = state, batch

    def rate(self, run: Callable[[Any], Any], dispatches: int, steps: int) -> float:
        """img/s of `dispatches` calls of `run(state) -> (state, metrics)`."""
        import jax

        t = time.perf_counter()
        for _ in range(dispatches):
            self.state, metrics = run(self.state)
        jax.block_until_ready(metrics)
        return dispatches * steps * self.batch / (time.perf_counter() - t)


def _time_windows(windows: _Windows, real: Callable, synthetic: Callable, stepwise: Callable, k: int) -> dict:
    """Real and synthetic windows alternate, so both see the same neighbours; the
    ratio is taken per pair, then the median."""
    for run in (real, synthetic, stepwise):  # Warm-up.
        windows.rate(run, 1, 1)
    real_rates, synthetic_rates = [], []
    for _ in range(WINDOWS):
        real_rates.append(windows.rate(real, 1, k))
        synthetic_rates.append(windows.rate(synthetic, 1, k))
    stepwise_rate = statistics.median(windows.rate(stepwise, k, 1) for _ in range(3))
    return {
        "train_images_per_second": statistics.median(real_rates),
        "synthetic_images_per_second": statistics.median(synthetic_rates),
        "real_over_synthetic": statistics.median(
            a / b for a, b in zip(real_rates, synthetic_rates, strict=True)
        ),
        "train_windows": real_rates,
        "synthetic_windows": synthetic_rates,
        "stepwise_images_per_second": stepwise_rate,
    }


def _eval_rate(par: Any, state: Any, test: Any, batch_size: int) -> float:
    """Test-split img/s through the jitted eval step (after a compiling pass)."""
    eval_fn = par.compile_eval_step(steps.eval_step)
    evaluate.evaluate(eval_fn, state, test, batch_size, par)  # Compile and warm up.
    t = time.perf_counter()
    evaluate.evaluate(eval_fn, state, test, batch_size, par)
    return len(test) / (time.perf_counter() - t)


def jax_worker(name: str) -> dict[str, Any]:
    """Our training path: compile, then time scanned chunks on real and fixed batches."""
    import jax
    import numpy as np

    config, par, splits, state, data, step, rng = jax_setup(name)
    split, batch = splits["train"], config.batch_size
    k = timed_steps(config, jax.default_backend() != "cpu")
    t0 = time.perf_counter()
    chunk = par.compile_train_chunk(step, state, data, k, batch, rng)
    compile_seconds = time.perf_counter() - t0
    single = par.compile_train_chunk(step, state, data, 1, batch, rng)
    real = input_pipeline.epoch_batch_indices(len(split), batch, config.seed, 1)[:k]
    fixed_batch = par.put_batch((split.images[real[0]], split.labels[real[0]].astype(np.int32)))
    synthetic = compile_synthetic_chunk(par, step, state, fixed_batch, k, rng)
    windows = _Windows(state, batch)
    # Indices travel with each dispatch, as in training (one transfer per dispatch).
    rates = _time_windows(
        windows,
        lambda s: chunk(s, data, jax.device_put(real), rng),
        lambda s: synthetic(s, fixed_batch, rng),
        lambda s: single(s, data, jax.device_put(real[:1]), rng),
        k,
    )
    eval_rate = _eval_rate(par, windows.state, splits["test"], config.eval_batch_size)
    return {
        "framework": "jax",
        "version": jax.__version__,
        "device": jax.devices()[0].device_kind,
        "batch_size": batch,
        "compute_dtype": config.compute_dtype,
        **rates,
        "steps_per_dispatch": k,
        "compile_seconds": compile_seconds,
        "eval_images_per_second": eval_rate,
        "seconds_per_epoch": len(split) // batch * batch / rates["train_images_per_second"],
        "peak_rss_mib": peak_rss_mib(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


# ----------------------------------------------------------------- ablation

# What each CPU choice buys: the scanned cnn4 training rate with one choice undone.
ABLATIONS = {
    "ours": "everything as shipped",
    "jaxlib_default_flags": "jaxlib's default XLA:CPU flags (YNNPACK also for convolutions, elementwise)",
    "unfused_bn": "batch norm, ReLU and pooling as three steps (flax's BatchNorm), not one fused op",
    "reduce_max_pool": "as unfused_bn, with 2x2 pooling as one reduce-max over a reshaped window",
    "xla_convs": "XLA's convolutions, not oneDNN's (where model.conv_op='auto' takes oneDNN)",
    "whole_batch_kernel_grad": "as xla_convs, with each kernel gradient as one convolution over the whole batch",
    "conv_first_layer": "the first convolution (one input channel) as a convolution (oneDNN's or XLA's), not multiply-adds",
    "autodiff_conv": "backward convolutions left to autodiff (lax.conv_general_dilated)",
}
# The model fields (fmnist_jax/ops.py) that undo a choice; the flags variant is an environment.
ABLATION_OVERRIDES = {
    "unfused_bn": "+model.bn_op=flax",
    "reduce_max_pool": "+model.bn_op=flax+model.pool_op=reduce_max",
    "xla_convs": "+model.conv_op=custom",
    "whole_batch_kernel_grad": "+model.conv_op=custom+model.kernel_grad_chunks=(1,1,1,1)",
    "conv_first_layer": "+model.taps_conv=False",
    "autodiff_conv": "+model.conv_op=lax+model.kernel_grad_chunks=(1,1,1,1)",
}


def ablation_worker(name: str, variant: str) -> dict[str, Any]:
    """Scanned-training img/s with one of our CPU choices undone (see ABLATIONS)."""
    import jax
    import jax.numpy as jnp

    config, par, splits, state, data, step, rng = jax_setup(name + ABLATION_OVERRIDES.get(variant, ""))
    batch, k = config.batch_size, max(4, timed_steps(config) // 3)
    chunk = par.compile_train_chunk(step, state, data, k, batch, rng)
    idx = jnp.asarray(input_pipeline.epoch_batch_indices(len(splits["train"]), batch, 0, 1)[:k])
    state, metrics = chunk(state, data, idx, rng)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        state, metrics = chunk(state, data, idx, rng)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
    return {
        "variant": variant,
        "train_images_per_second": k * batch / statistics.median(times),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


# --------------------------------------------------------- time to accuracy


def jax_time_to_accuracy(name: str) -> dict[str, Any]:
    """`launch.py`'s training loop from process start (`train.train_and_evaluate` in
    a temporary workdir, no report), testing after every epoch and stopping at the
    first epoch whose test accuracy reaches the target."""
    import tempfile

    from fmnist_jax import train

    config = load_config(name)
    config.test_every_epoch = True
    config.stop_at_test_accuracy = TARGET_ACCURACY
    config.write_report = False
    with tempfile.TemporaryDirectory() as workdir:
        results = train.train_and_evaluate(config, workdir)
        if results is None:
            raise RuntimeError("training was stopped by a signal")
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
    result: dict[str, Any] = {
        "framework": "jax",
        "seconds_to_first_step": results["first_step_seconds"],  # Data loaded, step compiled.
        "best_test_accuracy": max(r["test_accuracy"] for r in records),
        "epoch_budget": config.num_epochs,
    }
    reached = [r for r in records if r["test_accuracy"] >= TARGET_ACCURACY]
    if reached:
        result.update(
            seconds_to_target=reached[0]["seconds_since_process_start"], epochs_to_target=reached[0]["epoch"]
        )
    return result
