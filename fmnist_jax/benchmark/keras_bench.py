"""TF Keras's side: the config's network in Keras and `model.fit`'s speed and time
to accuracy on the same split and batch size."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from fmnist_jax import input_pipeline, seconds_since_process_start
from fmnist_jax.benchmark.common import TARGET_ACCURACY, load_config, network, peak_rss_mib, timed_steps


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


# Keras setups timed in one child, each on a freshly built model; the fastest counts.
KERAS_SETUPS: dict[str, dict[str, Any]] = {
    "fit defaults": {},
    "jit_compile": {"jit_compile": True},
    "jit_compile, steps_per_execution": {"jit_compile": True, "steps_per_execution": 0},  # 0: all steps.
}


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


def _time_setups(compiled: Callable[..., Any], x: Any, y: Any, k: int, batch: int) -> dict[str, Any]:
    """img/s (median of 3 fits of `k` steps after a tracing one) per KERAS_SETUPS entry,
    and the parameter count."""
    n = k * batch
    setups, num_params = {}, 0
    for setup, options in KERAS_SETUPS.items():
        if options.get("steps_per_execution") == 0:
            options = {**options, "steps_per_execution": k}
        model = compiled(**options)
        num_params = int(model.count_params())
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
    return {"num_params": num_params, "setups": setups}


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
        return {**result, **_time_to_accuracy(model, splits, x, y, batch, epochs_to_target)}
    result.update(_time_setups(compiled, x, y, timed_steps(config), batch))
    setups = result["setups"]
    fastest = max(setups, key=lambda s: setups[s]["train_images_per_second"])
    result["fastest_setup"] = fastest
    result["train_images_per_second"] = setups[fastest]["train_images_per_second"]
    result["peak_rss_mib"] = peak_rss_mib()
    return result
