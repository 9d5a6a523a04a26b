"""Training speed of our JAX path against TF Keras (and PyTorch where installed),
measured in one run on one machine.

    make bench
    python -m fmnist_jax.benchmark [--configs=cnn4,mlp_256] [--repeats=3] [--time_to_accuracy]

Every measurement runs in a fresh child process, and the frameworks take turns
(jax, keras, jax, keras, ...) so that a noisy neighbour hurts all of them alike;
each figure is the median over `--repeats` such rounds. Per config it reports:

- train img/s: steady state, compilation excluded, batch and float32 as the
  config says, on the real training split placed on the device and the same
  shuffled batches training uses, scanned `steps_per_dispatch` steps at a time;
- synthetic img/s: the same scanned step on one fixed device-resident batch, no
  rows gathered from the split, and the real/synthetic ratio (what reading the
  shuffled batches costs), from alternating windows;
- step-by-step img/s: one dispatch per step (`steps_per_dispatch=1`);
- compile seconds, seconds per epoch, evaluation img/s, peak resident memory of
  the process (after data, compilation and all timing);
- the same model in TF Keras (`model.fit` on in-memory arrays, Keras defaults)
  and its img/s, our ratio to it; PyTorch likewise when `torch` imports;
- with --time_to_accuracy: seconds from process start until cnn4 first reaches
  0.9156 test accuracy (seed 000's number), ours vs Keras with the same epoch budget.

Results go to stdout as a table and to --json (default docs/benchmark.json).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from fmnist_jax import input_pipeline, seconds_since_process_start

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_ACCURACY = 0.9156  # Seed 000's cnn4 test accuracy.
WINDOWS = 5  # Timed windows per JAX child for the real and the synthetic input.


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB.


def load_config(name: str) -> Any:
    """configs/<name>.py's config; `name+key=value+...` overrides top-level fields
    (values as Python literals), e.g. `cnn4_accelerator+batch_size=4096`."""
    import ast

    sys.path.insert(0, ROOT)
    base, *overrides = name.split("+")
    config = importlib.import_module(f"configs.{base}").get_config()
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in config:
            raise ValueError(f"{name}: override {item!r} is not key=value for a field of configs/{base}.py")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        setattr(config, key, parsed)
    return config


def _timed_steps(config: Any, accelerator: bool = False) -> int:
    """Steps per timed dispatch: about 5 s of CPU work, at most one epoch; on an
    accelerator one whole epoch (steps are short there)."""
    steps_per_epoch = input_pipeline.num_train_examples(config.validation_fraction) // config.batch_size
    if accelerator:
        return steps_per_epoch
    per_image_work = 1 if config.model.name == "mlp" else 60  # Rough cost ratio cnn / mlp.
    return max(10, min(steps_per_epoch, 200_000 // (config.batch_size * per_image_work) + 1))


# --------------------------------------------------------------------------- JAX


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


def _jax_setup(name: str) -> tuple[Any, ...]:
    """(config, par, splits, state, data, step, rng) for timing config `name`'s
    scanned training on the device-resident training split."""
    import jax
    import numpy as np

    from fmnist_jax import parallel, train

    config = load_config(name)
    par = parallel.DataParallel("jit")
    splits = input_pipeline.load_splits(config.data_dir, config.validation_fraction, config.split_seed)
    split = splits["train"]
    _, state = train.create_train_state(config, jax.random.PRNGKey(0), len(split) // config.batch_size)
    data = par.put_dataset((split.images, split.labels.astype(np.int32)))
    step = train._train_step_fn(config, par)
    return config, par, splits, par.put_state(state), data, step, jax.random.PRNGKey(1)


def profile_ops(name: str, num_steps: int = 200) -> str:
    """Where a scanned training step's time goes: one traced dispatch of
    `num_steps` steps (after a warm-up one), each XLA operation's time per step
    (summed over the threads that ran it) as a markdown table."""
    import gzip
    import re
    import tempfile

    import jax

    config, par, splits, state, data, step, rng = _jax_setup(name)
    batch = config.batch_size
    num_steps = min(num_steps, len(splits["train"]) // batch)
    chunk = par.compile_train_chunk(step, state, data, num_steps, batch, rng)
    indices = input_pipeline.epoch_batch_indices(len(splits["train"]), batch, config.seed, 1)
    indices = jax.device_put(indices[:num_steps])
    state, metrics = chunk(state, data, indices, rng)
    jax.block_until_ready(metrics)
    # Each operation of the compiled program and what it computes (its jax op path).
    what: dict[str, str] = {}
    for line in chunk.as_text().splitlines():
        found, op_name = re.search(r"%([\w.\-]+) = ", line), re.search(r'op_name="([^"]*)"', line)
        if found:
            what[found.group(1)] = "/".join(op_name.group(1).split("/")[-2:]) if op_name else "-"
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            t = time.perf_counter()
            state, metrics = chunk(state, data, indices, rng)
            jax.block_until_ready(metrics)
            wall = time.perf_counter() - t
        trace_files = [os.path.join(d, f) for d, _, fs in os.walk(tmp) for f in fs if f.endswith(".json.gz")]
        if not trace_files:
            raise RuntimeError("the JAX profiler wrote no trace")
        with gzip.open(trace_files[0]) as f:
            events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    totals: dict[str, float] = {}
    for e in events:
        if e.get("ph") == "X" and e.get("name") in what:
            totals[e["name"]] = totals.get(e["name"], 0.0) + e.get("dur", 0.0)
    if not totals:
        raise RuntimeError(
            f"no operation of the compiled program is named in the trace ({jax.default_backend()})"
        )
    per_step_us = wall / num_steps * 1e6
    lines = [
        f"`{name}` (batch {batch}): {num_steps} scanned steps traced, {per_step_us:,.0f} us per step "
        f"wall ({batch / per_step_us * 1e6:,.0f} img/s under the profiler), {machine()}.",
        "",
        "| XLA operation | computes | us per step | share of the step |",
        "|---|---|---|---|",
    ]
    for op, us in sorted(totals.items(), key=lambda kv: -kv[1]):
        us /= num_steps
        if us >= 0.01 * per_step_us:
            lines.append(f"| `{op}` | {what[op]} | {us:,.1f} | {us / per_step_us:.1%} |")
    small = [v / num_steps for v in totals.values() if v / num_steps < 0.01 * per_step_us]
    lines.append(
        f"| {len(small)} others, under 1 % each | | {sum(small):,.1f} | {sum(small) / per_step_us:.1%} |"
    )
    return "\n".join(lines)


def jax_worker(name: str) -> dict[str, Any]:
    """Our training path: compile, then time scanned chunks on real and fixed batches."""
    import jax
    import numpy as np

    from fmnist_jax import train

    config, par, splits, state, data, step, rng = _jax_setup(name)
    split = splits["train"]
    batch = config.batch_size
    steps_per_epoch = len(split) // batch
    k = _timed_steps(config, jax.default_backend() != "cpu")

    t0 = time.perf_counter()
    chunk = par.compile_train_chunk(step, state, data, k, batch, rng)
    compile_seconds = time.perf_counter() - t0
    single = par.compile_train_chunk(step, state, data, 1, batch, rng)

    real = input_pipeline.epoch_batch_indices(len(split), batch, config.seed, 1)[:k]
    fixed_batch = par.put_batch((split.images[real[0]], split.labels[real[0]].astype(np.int32)))
    synthetic = compile_synthetic_chunk(par, step, state, fixed_batch, k, rng)

    def window(run: Any, dispatches: int, steps: int) -> float:
        """img/s of `dispatches` calls of `run(state) -> (state, metrics)`."""
        nonlocal state
        t = time.perf_counter()
        for _ in range(dispatches):
            state, metrics = run(state)
        jax.block_until_ready(metrics)
        return dispatches * steps * batch / (time.perf_counter() - t)

    # Indices travel with each dispatch, as in training (one transfer per dispatch).
    def real_run(s: Any) -> Any:
        return chunk(s, data, jax.device_put(real), rng)

    def synthetic_run(s: Any) -> Any:
        return synthetic(s, fixed_batch, rng)

    def stepwise_run(s: Any) -> Any:
        return single(s, data, jax.device_put(real[:1]), rng)

    for run in (real_run, synthetic_run, stepwise_run):  # Warm-up.
        window(run, 1, 1)
    # Real and synthetic windows alternate, so both see the same neighbours; the
    # ratio is taken per pair, then the median.
    real_rates, synthetic_rates = [], []
    for _ in range(WINDOWS):
        real_rates.append(window(real_run, 1, k))
        synthetic_rates.append(window(synthetic_run, 1, k))
    stepwise_rate = statistics.median(window(stepwise_run, k, 1) for _ in range(3))
    real_rate = statistics.median(real_rates)

    eval_fn = par.compile_eval_step(train.eval_step)
    test = splits["test"]
    train.evaluate(eval_fn, state, test, config.eval_batch_size, par)  # Compile and warm up.
    t = time.perf_counter()
    train.evaluate(eval_fn, state, test, config.eval_batch_size, par)
    eval_rate = len(test) / (time.perf_counter() - t)
    return {
        "framework": "jax",
        "version": jax.__version__,
        "device": jax.devices()[0].device_kind,
        "batch_size": batch,
        "compute_dtype": config.get("compute_dtype", "float32"),
        "train_images_per_second": real_rate,
        "synthetic_images_per_second": statistics.median(synthetic_rates),
        "real_over_synthetic": statistics.median(
            a / b for a, b in zip(real_rates, synthetic_rates, strict=True)
        ),
        "train_windows": real_rates,
        "synthetic_windows": synthetic_rates,
        "stepwise_images_per_second": stepwise_rate,
        "steps_per_dispatch": k,
        "compile_seconds": compile_seconds,
        "eval_images_per_second": eval_rate,
        "seconds_per_epoch": steps_per_epoch * batch / real_rate,
        "peak_rss_mib": peak_rss_mib(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


# ---------------------------------------------------------------------- ablation

# What each CPU choice buys: the scanned cnn4 training rate with one choice undone.
ABLATIONS = {
    "ours": "everything as shipped",
    "jaxlib_default_flags": "jaxlib's default XLA:CPU flags (YNNPACK also for convolutions, elementwise)",
    "reduce_max_pool": "2x2 pooling as one reduce-max over a reshaped window",
    "autodiff_conv": "backward convolutions left to autodiff (lax.conv_general_dilated)",
}


def ablation_worker(name: str, variant: str) -> dict[str, Any]:
    """Scanned-training img/s with one of our CPU choices undone (see ABLATIONS)."""
    import jax
    import jax.numpy as jnp

    from fmnist_jax import models

    if variant == "reduce_max_pool":

        def reduce_max_pool(x: Any) -> Any:
            n, h, w, c = x.shape
            x = x[:, : h // 2 * 2, : w // 2 * 2, :]
            return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))

        models.max_pool_2x2 = reduce_max_pool
    elif variant == "autodiff_conv":
        models._conv_general_dilated = jax.lax.conv_general_dilated  # type: ignore[assignment]
    config, par, splits, state, data, step, rng = _jax_setup(name)
    batch, k = config.batch_size, max(4, _timed_steps(config) // 3)
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


# ------------------------------------------------------------------------- Keras


def keras_model(config: Any) -> Any:
    """The config's network in Keras (layers, initializers and BN constants alike)."""
    import keras

    m = config.model
    layers: list[Any] = [keras.Input((28, 28, 1))]
    if m.name == "mlp":
        layers.append(keras.layers.Flatten())
        dropouts = m.get("dropout", 0.0)
        for i, width in enumerate(m.hidden):
            layers.append(keras.layers.Dense(width, activation=m.get("activation", "relu")))
            rate = dropouts[i] if isinstance(dropouts, (list, tuple)) else dropouts
            if rate:
                layers.append(keras.layers.Dropout(rate))
    else:
        n = len(m.conv_features)

        def per_layer(value: Any) -> list[Any]:
            return list(value) if isinstance(value, (list, tuple)) else [value] * n

        for feats, k, pad, rate in zip(
            m.conv_features,
            per_layer(m.get("kernel_size", 3)),
            per_layer(m.get("padding", "SAME")),
            per_layer(m.get("conv_dropout", 0.0)),
            strict=True,
        ):
            layers.append(keras.layers.Conv2D(feats, k, padding=pad.lower()))
            if m.get("batch_norm", False):
                layers.append(keras.layers.BatchNormalization(momentum=0.99, epsilon=1e-3))
            layers.append(keras.layers.Activation(m.get("activation", "relu")))
            if m.get("pool", True):
                layers.append(keras.layers.MaxPooling2D(2))
            if rate:
                layers.append(keras.layers.Dropout(rate))
        layers.append(keras.layers.Flatten())
        dense = list(m.get("dense_features", ()))
        dropouts = m.get("dense_dropout", 0.0)
        for i, width in enumerate(dense):
            layers.append(keras.layers.Dense(width, activation=m.get("activation", "relu")))
            rate = dropouts[i] if isinstance(dropouts, (list, tuple)) else dropouts
            if rate:
                layers.append(keras.layers.Dropout(rate))
    layers.append(keras.layers.Dense(10))
    return keras.Sequential(layers)


# Keras setups timed in one child, each on a freshly built model; the fastest counts.
KERAS_SETUPS: dict[str, dict[str, Any]] = {
    "fit defaults": {},
    "jit_compile": {"jit_compile": True},
    "jit_compile, steps_per_execution": {"jit_compile": True, "steps_per_execution": 0},  # 0: all steps.
}


def keras_worker(name: str, epochs_to_target: int = 0) -> dict[str, Any]:
    """TF Keras on the same split and batch size: `fit` on in-memory float32 arrays.

    Speed: each of KERAS_SETUPS (Keras's defaults, XLA, XLA with the whole timed
    run in one `steps_per_execution`) on its own fresh model; the fastest is Keras's
    figure, all are recorded. Time to accuracy uses `fit` with its defaults.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import numpy as np
    import tensorflow as tf

    config = load_config(name)
    splits = input_pipeline.load_splits(config.data_dir, config.validation_fraction, config.split_seed)
    x = splits["train"].images.astype(np.float32) / 255.0
    y = splits["train"].labels
    batch = config.batch_size

    def compiled(**options: Any) -> Any:
        model = keras_model(config)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            **options,
        )
        return model

    result: dict[str, Any] = {
        "framework": "keras",
        "version": f"tensorflow {tf.__version__}, keras {keras.__version__}",
    }
    if epochs_to_target:
        model = compiled()
        result["num_params"] = int(model.count_params())
        xt = splits["test"].images.astype(np.float32) / 255.0
        yt = splits["test"].labels
        best = 0.0
        for epoch in range(1, epochs_to_target + 1):
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=True)
            acc = float(model.evaluate(xt, yt, batch_size=1000, verbose=0)[1])
            best = max(best, acc)
            if acc >= TARGET_ACCURACY:
                result.update(seconds_to_target=seconds_since_process_start(), epochs_to_target=epoch)
                break
        result["best_test_accuracy"] = best
        return result
    k = _timed_steps(config)
    n = k * batch
    setups = {}
    for setup, options in KERAS_SETUPS.items():
        if options.get("steps_per_execution") == 0:
            options = {**options, "steps_per_execution": k}
        model = compiled(**options)
        result["num_params"] = int(model.count_params())
        t = time.perf_counter()
        model.fit(x[:n], y[:n], batch_size=batch, epochs=1, verbose=0, shuffle=False)  # Traces, warms up.
        compile_seconds = time.perf_counter() - t
        times = []
        for _ in range(3):
            t = time.perf_counter()
            model.fit(x[:n], y[:n], batch_size=batch, epochs=1, verbose=0, shuffle=False)
            times.append(time.perf_counter() - t)
        setups[setup] = {
            "train_images_per_second": n / statistics.median(times),
            "compile_seconds": compile_seconds,
            "jit_compile": str(model.jit_compile),
        }
    fastest = max(setups, key=lambda s: setups[s]["train_images_per_second"])
    result["setups"] = setups
    result["fastest_setup"] = fastest
    result["train_images_per_second"] = setups[fastest]["train_images_per_second"]
    result["peak_rss_mib"] = peak_rss_mib()
    return result


# ----------------------------------------------------------------------- PyTorch


def torch_worker(name: str) -> dict[str, Any]:
    """PyTorch eager on the same batches (CNN and MLP configs built as in Keras).

    On a CUDA machine the model and the timed batches live on the GPU, cuDNN may
    pick its fastest kernels (`benchmark=True`), and a bfloat16 config runs under
    `torch.autocast(bfloat16)`, as ours computes in bfloat16 with float32 parameters.
    """
    import contextlib

    import numpy as np
    import torch

    config = load_config(name)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = True
    m = config.model
    nn = torch.nn
    layers: list[Any] = []
    if m.name == "mlp":
        layers.append(nn.Flatten())
        width_in = 784
        for width in m.hidden:
            layers += [nn.Linear(width_in, width), nn.ReLU()]
            width_in = width
    else:
        channels, size = 1, 28
        for feats in m.conv_features:
            layers += [
                nn.Conv2d(channels, feats, 3, padding="same" if m.get("padding", "SAME") == "SAME" else 0)
            ]
            if m.get("batch_norm", False):
                layers.append(nn.BatchNorm2d(feats, eps=1e-3, momentum=0.01))
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            channels, size = feats, size // 2
        layers.append(nn.Flatten())
        width_in = channels * size * size
        for width in m.get("dense_features", ()):
            layers += [nn.Linear(width_in, width), nn.ReLU()]
            width_in = width
    layers.append(nn.Linear(width_in, 10))
    model = nn.Sequential(*layers).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    splits = input_pipeline.load_splits(config.data_dir, config.validation_fraction, config.split_seed)
    batch = config.batch_size
    k = _timed_steps(config, cuda)
    x = torch.from_numpy(splits["train"].images[: k * batch].astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    y = torch.from_numpy(splits["train"].labels[: k * batch].astype(np.int64))
    x, y = x.contiguous().to(device), y.to(device)
    bf16 = config.get("compute_dtype", "float32") == "bfloat16"

    def autocast() -> Any:
        if bf16:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def epoch() -> None:
        for i in range(k):
            opt.zero_grad()
            with autocast():
                loss = nn.functional.cross_entropy(
                    model(x[i * batch : (i + 1) * batch]), y[i * batch : (i + 1) * batch]
                )
            loss.backward()
            opt.step()
        if cuda:
            torch.cuda.synchronize()

    epoch()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        epoch()
        times.append(time.perf_counter() - t)
    return {
        "framework": "torch",
        "version": torch.__version__,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "autocast_bfloat16": bf16,
        "train_images_per_second": k * batch / statistics.median(times),
        "peak_rss_mib": peak_rss_mib(),
    }


# ----------------------------------------------------------- time to accuracy


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


# ------------------------------------------------------------------ the parent


def _child(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs one measurement in a fresh process and returns its JSON result."""
    command = [sys.executable, "-m", "fmnist_jax.benchmark", *args]
    proc = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})}
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def machine() -> str:
    from fmnist_jax.train import machine_description

    return machine_description()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", default="cnn4,mlp_256", help="comma-separated config names")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument(
        "--frameworks", default="jax,keras,torch", help="keras and torch are skipped when not installed"
    )
    parser.add_argument(
        "--time_to_accuracy", action="store_true", help="also time cnn4 to 0.9156 test accuracy"
    )
    parser.add_argument("--ablation", action="store_true", help="also time cnn4 with each CPU choice undone")
    parser.add_argument("--json", default=os.path.join(ROOT, "docs", "benchmark.json"))
    parser.add_argument(
        "--markdown",
        default=os.path.join(ROOT, "docs", "PERFORMANCE.md"),
        help="file whose block between the benchmark markers gets the results ('' to skip)",
    )
    parser.add_argument(
        "--block",
        default="benchmark",
        help="marker name: the results replace <!-- NAME:begin --> ... <!-- NAME:end -->",
    )
    parser.add_argument(
        "--from_json", help="measure nothing: rewrite the markdown block from this earlier --json output"
    )
    parser.add_argument(
        "--profile",
        metavar="NAME",
        help="measure nothing else: time each XLA operation of NAME's training step",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--epochs_to_target", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:  # A child: one measurement, one JSON line.
        workers = {
            "jax": lambda: jax_worker(args.config),
            "keras": lambda: keras_worker(args.config),
            "torch": lambda: torch_worker(args.config),
            "jax_tta": lambda: jax_time_to_accuracy(args.config),
            "keras_tta": lambda: keras_worker(args.config, args.epochs_to_target),
            "ablation": lambda: ablation_worker(args.config, args.variant),
        }
        print(json.dumps(workers[args.worker]()), flush=True)
        return 0

    if args.profile:
        print(profile_ops(args.profile), flush=True)
        return 0

    if args.from_json:
        with open(args.from_json) as f:
            return _write_markdown(args.markdown, args.block, markdown(json.load(f)))

    names = [n for n in args.configs.split(",") if n]
    frameworks = [f for f in args.frameworks.split(",") if f]
    for framework, module in (("keras", "keras"), ("torch", "torch")):
        if framework in frameworks and not input_pipeline.installed(module):
            print(f"{module} is not installed: {framework} is skipped", flush=True)
            frameworks.remove(framework)
    report: dict[str, Any] = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "repeats": args.repeats,
        "configs": {},
    }
    for name in names:
        runs: dict[str, list[dict[str, Any]]] = {f: [] for f in frameworks}
        for r in range(args.repeats):
            for framework in frameworks:
                print(f"{name}: round {r + 1}/{args.repeats}, {framework} ...", flush=True)
                runs[framework].append(_child(["--worker", framework, "--config", name]))
        summary: dict[str, Any] = {"runs": runs}
        if "jax" in runs:
            j = runs["jax"]
            summary["jax"] = {
                key: _median(j, key)
                for key in (
                    "train_images_per_second",
                    "synthetic_images_per_second",
                    "stepwise_images_per_second",
                    "compile_seconds",
                    "eval_images_per_second",
                    "seconds_per_epoch",
                    "peak_rss_mib",
                )
            }
            summary["jax"]["real_over_synthetic"] = _median(j, "real_over_synthetic")
            for other in ("keras", "torch"):
                if other in runs:
                    summary[other] = {
                        "train_images_per_second": _median(runs[other], "train_images_per_second"),
                        "peak_rss_mib": _median(runs[other], "peak_rss_mib"),
                    }
                    if other == "keras":  # Every Keras setup's median, and which was fastest.
                        setups = runs[other][0].get("setups", {})
                        summary[other]["setups"] = {
                            setup: statistics.median(
                                r["setups"][setup]["train_images_per_second"] for r in runs[other]
                            )
                            for setup in setups
                        }
                        summary[other]["fastest_setup"] = statistics.mode(
                            r["fastest_setup"] for r in runs[other]
                        )
                    # Ratios per round (the two ran back to back), then the median.
                    summary["jax"][f"over_{other}"] = statistics.median(
                        a["train_images_per_second"] / b["train_images_per_second"]
                        for a, b in zip(j, runs[other], strict=True)
                    )
        report["configs"][name] = summary
    if args.ablation:
        runs_by_variant: dict[str, list[float]] = {v: [] for v in ABLATIONS}
        for r in range(args.repeats):
            for variant in ABLATIONS:
                print(f"cnn4 ablation: round {r + 1}/{args.repeats}, {variant} ...", flush=True)
                env = {"FMNIST_JAX_CPU_FLAGS": "0"} if variant == "jaxlib_default_flags" else None
                if env and "XLA_FLAGS" in os.environ:
                    env["XLA_FLAGS"] = " ".join(
                        f for f in os.environ["XLA_FLAGS"].split() if "ynn_fusion_type" not in f
                    )
                out = _child(["--worker", "ablation", "--config", "cnn4", "--variant", variant], env)
                runs_by_variant[variant].append(out["train_images_per_second"])
        ours = runs_by_variant["ours"]
        report["ablation"] = {
            v: {
                "what": ABLATIONS[v],
                "train_images_per_second": statistics.median(x),
                "ours_over_this": statistics.median(a / b for a, b in zip(ours, x, strict=True)),
                "runs": x,
            }
            for v, x in runs_by_variant.items()
        }
    if args.time_to_accuracy:
        config = load_config("cnn4")
        print("cnn4 time to accuracy: ours ...", flush=True)
        ours_tta = _child(["--worker", "jax_tta", "--config", "cnn4"])
        print("cnn4 time to accuracy: keras ...", flush=True)
        theirs = _child(
            ["--worker", "keras_tta", "--config", "cnn4", "--epochs_to_target", str(config.num_epochs)]
        )
        report["time_to_accuracy"] = {"target": TARGET_ACCURACY, "jax": ours_tta, "keras": theirs}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.json}")
    return _write_markdown(args.markdown, args.block, markdown(report))


def _write_markdown(path: str, block: str, text: str) -> int:
    print(text)
    if path:
        if update_markdown(path, text, block):
            print(f"updated the {block} block of {path}")
        else:
            begin, end = markers(block)
            print(f"{path} has no {begin} ... {end} block: not changed")
    return 0


def markers(block: str = "benchmark") -> tuple[str, str]:
    return f"<!-- {block}:begin -->", f"<!-- {block}:end -->"


BEGIN, END = markers()


def update_markdown(path: str, text: str, block: str = "benchmark") -> bool:
    """Replaces the text between the block's markers in `path`; False if they are absent."""
    begin, end = markers(block)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        page = f.read()
    if begin not in page or end not in page:
        return False
    head, rest = page.split(begin, 1)
    _, tail = rest.split(end, 1)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{head}{begin}\n{text}\n{end}{tail}")
    os.replace(tmp, path)
    return True


def markdown(report: dict[str, Any]) -> str:
    """The benchmark's results as markdown (what docs/PERFORMANCE.md quotes)."""
    lines = [
        f"Measured {report['date']} on {report['machine']}; medians of {report['repeats']} interleaved rounds.",
        "",
        "| config | batch, dtype | ours train img/s | synthetic img/s | real/synthetic | step-by-step img/s | "
        "compile s | s/epoch | eval img/s | peak RSS MiB | Keras img/s | ours/Keras | PyTorch img/s | ours/PyTorch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in report["configs"].items():
        j = s.get("jax", {})
        k = s.get("keras", {})
        t = s.get("torch", {})

        def fmt(d: dict[str, Any], key: str, spec: str = ",.0f", suffix: str = "") -> str:
            return format(d[key], spec) + suffix if key in d else "-"

        first = (s.get("runs", {}).get("jax") or [{}])[0]
        setup = f"{first['batch_size']}, {first['compute_dtype']}" if "batch_size" in first else "-"

        lines.append(
            f"| `{name}` | {setup} | {fmt(j, 'train_images_per_second')} | {fmt(j, 'synthetic_images_per_second')} | "
            f"{fmt(j, 'real_over_synthetic', '.3f')} | {fmt(j, 'stepwise_images_per_second')} | "
            f"{fmt(j, 'compile_seconds', '.1f')} | {fmt(j, 'seconds_per_epoch', '.1f')} | "
            f"{fmt(j, 'eval_images_per_second')} | {fmt(j, 'peak_rss_mib')} | "
            f"{fmt(k, 'train_images_per_second')} | {fmt(j, 'over_keras', '.2f', 'x')} | "
            f"{fmt(t, 'train_images_per_second')} | {fmt(j, 'over_torch', '.2f', 'x')} |"
        )
    keras_setups = {
        name: s["keras"]["setups"] for name, s in report["configs"].items() if "setups" in s.get("keras", {})
    }
    if keras_setups:
        names = list(next(iter(keras_setups.values())))
        lines += [
            "",
            "Keras's figure above is its fastest setup in each round; every setup (img/s):",
            "",
            "| config | " + " | ".join(f"Keras: {n}" for n in names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for name, setups in keras_setups.items():
            lines.append(f"| `{name}` | " + " | ".join(f"{setups[n]:,.0f}" for n in names) + " |")
    ablation = report.get("ablation")
    if ablation:
        lines += ["", "| cnn4, scanned training, with ... | img/s | ours / this |", "|---|---|---|"]
        for a in ablation.values():
            lines.append(
                f"| {a['what']} | {a['train_images_per_second']:,.0f} | {a['ours_over_this']:.2f}x |"
            )
    tta = report.get("time_to_accuracy")
    if tta:
        lines.append("")
        if "seconds_to_first_step" in tta["jax"]:
            lines.append(
                f"- jax: launch to first training step (data loaded, epoch program compiled): "
                f"{tta['jax']['seconds_to_first_step']:.1f} s."
            )
        for who in ("jax", "keras"):
            r = tta[who]
            if "seconds_to_target" in r:
                lines.append(
                    f"- {who}: cnn4 reached {tta['target']} test accuracy after epoch {r['epochs_to_target']}, "
                    f"{r['seconds_to_target']:.0f} s after process start."
                )
            else:
                lines.append(
                    f"- {who}: cnn4 never reached {tta['target']} within the epoch budget; "
                    f"best test accuracy {r['best_test_accuracy']:.4f}."
                )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
