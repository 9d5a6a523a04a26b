"""TF Keras's side: the config's network in Keras, `model.fit`'s steady-state speed in
each of Keras's setups, and its time to accuracy, on the same split and batch size."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from fmnist_jax import input_pipeline, seconds_since_process_start
from fmnist_jax.benchmark.common import (
    STEADY_SECONDS,
    TARGET_ACCURACY,
    StepClock,
    load_config,
    network,
    peak_rss_mib,
)


def keras_model(config: Any) -> Any:
    """The config's network in Keras (layers, initializers and BN constants alike),
    built from the same fields as ours (common.network)."""
    import keras

    net = network(config)
    layers: list[Any] = [keras.Input((28, 28, 1))]
    for block in net.conv:
        layers.append(keras.layers.Conv2D(block.features, block.kernel_size, padding=block.padding.lower()))
        if net.batch_norm:
            layers.append(keras.layers.BatchNormalization(momentum=net.bn_momentum, epsilon=net.bn_epsilon))
        layers.append(keras.layers.Activation(net.activation))
        if net.pool:
            layers.append(keras.layers.MaxPooling2D(2))
        if block.dropout:
            layers.append(keras.layers.Dropout(block.dropout))
    layers.append(keras.layers.Flatten())
    for width, rate in net.dense:
        layers.append(keras.layers.Dense(width, activation=net.activation))
        if rate:
            layers.append(keras.layers.Dropout(rate))
    layers.append(keras.layers.Dense(net.num_classes))
    return keras.Sequential(layers)


# Keras's setups, each timed in its own child on a freshly built model; the fastest counts.
# `inter_op_threads` is TF's process-wide setting (before any TF op); the rest go to compile.
KERAS_SETUPS: dict[str, dict[str, Any]] = {
    "fit defaults": {},
    "inter-op threads 2": {"inter_op_threads": 2},
    "jit_compile": {"jit_compile": True},
    "jit_compile, steps_per_execution": {"jit_compile": True, "steps_per_execution": 32},
}
MAX_EPOCHS = 20  # A steady run's cap; it stops once STEADY_SECONDS of steady steps are timed.


def _time_to_accuracy(model: Any, splits: dict[str, Any], x: Any, y: Any, batch: int, epochs: int) -> dict:
    """Fits one epoch at a time, testing after each, until the target accuracy."""
    import numpy as np

    xt = splits["test"].images.astype(np.float32) / 255.0
    yt = splits["test"].labels
    result: dict[str, Any] = {}
    best = 0.0
    for epoch in range(1, epochs + 1):
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=True)
        acc = float(model.evaluate(xt, yt, batch_size=1000, verbose=0)[1])
        best = max(best, acc)
        if acc >= TARGET_ACCURACY:
            result.update(seconds_to_target=seconds_since_process_start(), epochs_to_target=epoch)
            break
    result["best_test_accuracy"] = best
    return result


def steady_fit(
    model: Any,
    x: Any,
    y: Any,
    batch: int,
    steady_seconds: float = STEADY_SECONDS,
    clock: Callable[[], float] = time.perf_counter,
    max_epochs: int = MAX_EPOCHS,
) -> dict[str, Any]:
    """Keras's steady-state training img/s inside one long `model.fit` (a compiled
    model, in-memory arrays, no shuffling): a callback marks the clock after every
    batch (every `steps_per_execution` steps), restarts it at each epoch's start, and
    stops the fit once `steady_seconds` of steady steps are timed (common.StepClock).
    `x` is cut to whole executions, so that every batch has the same shape."""
    import keras

    per_call = int(model.steps_per_execution or 1)
    n = len(x) // (batch * per_call) * batch * per_call
    timer = StepClock(batch, clock=clock)

    class SteadyTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            timer.restart()

        def on_train_batch_end(self, step: int, logs: Any = None) -> None:
            timer.mark(per_call)
            if timer.steady_seconds >= steady_seconds:
                self.model.stop_training = True

    model.fit(
        x[:n], y[:n], batch_size=batch, epochs=max_epochs, verbose=0, shuffle=False, callbacks=[SteadyTimer()]
    )
    return {**timer.result(), "steps_per_execution": per_call}


def _keras_config(setup: str) -> tuple[Any, Any, dict[str, Any]]:
    """keras and tensorflow imported with the setup's threads, and its compile options."""
    if setup not in KERAS_SETUPS:
        raise ValueError(f"no Keras setup {setup!r}; there are {list(KERAS_SETUPS)}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    options = dict(KERAS_SETUPS[setup])
    threads = options.pop("inter_op_threads", None)
    if threads:
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    return keras, tf, options


def keras_worker(name: str, setup: str = "fit defaults", steady_seconds: float = STEADY_SECONDS) -> dict:
    """TF Keras's training speed in one of KERAS_SETUPS on the same split and batch size:
    `fit` on in-memory float32 arrays, timed in steady state (`steady_fit`)."""
    import numpy as np

    keras, tf, options = _keras_config(setup)
    config = load_config(name)
    splits = input_pipeline.load_splits(config.data_dir, config.validation_fraction, config.split_seed)
    x = splits["train"].images.astype(np.float32) / 255.0
    model = compiled_keras_model(config, **options)
    result = steady_fit(model, x, splits["train"].labels, config.batch_size, steady_seconds)
    return {
        "framework": "keras",
        "setup": setup,
        "version": f"tensorflow {tf.__version__}, keras {keras.__version__}",
        "num_params": int(model.count_params()),
        "jit_compile": str(model.jit_compile),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        **result,
        "peak_rss_mib": peak_rss_mib(),
    }


def compiled_keras_model(config: Any, **options: Any) -> Any:
    """`keras_model(config)` compiled as the benchmark trains it: Adam 1e-3, the
    cross-entropy on logits, accuracy; `options` go to `compile`."""
    import keras

    model = keras_model(config)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **options,
    )
    return model


def keras_time_to_accuracy(name: str, epochs: int) -> dict[str, Any]:
    """TF Keras to the target accuracy on the same split and batch size, `fit` with its
    defaults one epoch at a time, at most `epochs`."""
    import numpy as np

    keras, tf, _ = _keras_config("fit defaults")
    config = load_config(name)
    splits = input_pipeline.load_splits(config.data_dir, config.validation_fraction, config.split_seed)
    x = splits["train"].images.astype(np.float32) / 255.0
    model = compiled_keras_model(config)
    return {
        "framework": "keras",
        "version": f"tensorflow {tf.__version__}, keras {keras.__version__}",
        "num_params": int(model.count_params()),
        **_time_to_accuracy(model, splits, x, splits["train"].labels, config.batch_size, epochs),
    }
