"""An independent check of the benchmark's peer figures: PyTorch and Keras timed in steady
state by plain loops written here, without the package's benchmark code.

    .venv/bin/python docs/peer_timing.py torch|torch_cl|keras|keras_xla cnn4|mlp_256
        [--mallopt] [--jax_first] [--seconds=8]

cnn4 (batch 128) and mlp_256 (batch 64) as the configs define them, the first images of
the training IDX file (Debian's `dataset-fashion-mnist`) scaled to [0, 1], Adam 1e-3. The
clock is read after every step (Keras: in a batch-end callback, intervals inside epochs
only); the first 20 steps are left out, and both frameworks train until `--seconds` of
steady steps are timed. `torch_cl`: channels_last; `keras_xla`: jit_compile
with 32 steps per execution. `--mallopt`: glibc malloc's mmap and trim thresholds at
256 MiB first; `--jax_first`: one JAX operation before the framework starts (the
benchmark's children have imported JAX). Prints one line: img/s over the steady steps.
docs/PERFORMANCE.md ("PyTorch's allocator") has what it measured.
"""

import argparse
import ctypes
import gzip
import os
import time

import numpy as np

IDX = "/usr/share/datasets/fashion-mnist/{}-ubyte.gz"
WARMUP = 20


def training_images(count: int) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(IDX.format("train-images-idx3")) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16)[: count * 784]
    with gzip.open(IDX.format("train-labels-idx1")) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)[:count]
    return (x.reshape(count, 28, 28, 1) / 255.0).astype(np.float32), y.astype(np.int64)


def steady_rate(stamps: list[float], images_per_stamp: int) -> float:
    """img/s over the intervals between consecutive stamps after the warm-up."""
    steady = stamps[WARMUP:]
    return images_per_stamp * (len(steady) - 1) / (steady[-1] - steady[0])


def torch_rate(framework: str, model: str, x: np.ndarray, y: np.ndarray, batch: int, seconds: float) -> float:
    import torch
    from torch import nn

    if model == "cnn4":
        layers: list[nn.Module] = []
        channels = 1
        for features in (32, 64, 128, 256):
            layers += [
                nn.Conv2d(channels, features, 3, padding=1),
                nn.BatchNorm2d(features, eps=1e-3, momentum=0.01),
            ]
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            channels = features
        layers += [nn.Flatten(), nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 10)]
    else:
        layers = [nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10)]
    net = nn.Sequential(*layers)
    xt, yt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y)
    if framework == "torch_cl":
        net, xt = net.to(memory_format=torch.channels_last), xt.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    stamps: list[float] = []
    while len(stamps) <= WARMUP or stamps[-1] - stamps[WARMUP] < seconds:
        j = len(stamps) % (len(x) // batch) * batch
        opt.zero_grad()
        nn.functional.cross_entropy(net(xt[j : j + batch]), yt[j : j + batch]).backward()
        opt.step()
        stamps.append(time.perf_counter())
    return steady_rate(stamps, batch)


def keras_rate(framework: str, model: str, x: np.ndarray, y: np.ndarray, batch: int, seconds: float) -> float:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    from keras import layers as kl

    stack: list = [keras.Input((28, 28, 1))]
    if model == "cnn4":
        for features in (32, 64, 128, 256):
            stack += [
                kl.Conv2D(features, 3, padding="same"),
                kl.BatchNormalization(),
                kl.ReLU(),
                kl.MaxPooling2D(),
            ]
        stack += [kl.Flatten(), kl.Dense(128, activation="relu"), kl.Dropout(0.3), kl.Dense(10)]
    else:
        stack += [kl.Flatten(), kl.Dense(256, activation="relu"), kl.Dense(10)]
    net = keras.Sequential(stack)
    per_call = 32 if framework == "keras_xla" else 1
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    net.compile("adam", loss, jit_compile=framework == "keras_xla", steps_per_execution=per_call)
    intervals: list[float] = []
    last: list[float | None] = [None]

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            last[0] = None  # An interval across an epoch's end is not a step.

        def on_train_batch_end(self, step, logs=None):
            now = time.perf_counter()
            if last[0] is not None:
                intervals.append(now - last[0])
            last[0] = now
            self.model.stop_training = sum(intervals[skip:]) >= seconds

    skip = WARMUP // per_call
    net.fit(x, y, batch_size=batch, epochs=10_000, verbose=0, callbacks=[Clock()])
    steady = intervals[skip:]
    return batch * per_call * len(steady) / sum(steady)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("framework", choices=["torch", "torch_cl", "keras", "keras_xla"])
    parser.add_argument("model", choices=["cnn4", "mlp_256"])
    parser.add_argument("--mallopt", action="store_true")
    parser.add_argument("--jax_first", action="store_true")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    if args.mallopt:
        libc = ctypes.CDLL("libc.so.6")
        for option in (-1, -3):  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD
            libc.mallopt(option, 256 << 20)
    if args.jax_first:
        import jax.numpy as jnp

        jnp.zeros(1).block_until_ready()
    batch = 128 if args.model == "cnn4" else 64
    x, y = training_images(256 * batch)
    if args.framework.startswith("torch"):
        rate = torch_rate(args.framework, args.model, x, y, batch, args.seconds)
    else:
        rate = keras_rate(args.framework, args.model, x, y, batch, args.seconds)
    print(f"{args.framework} {args.model}: {rate:,.0f} img/s")


if __name__ == "__main__":
    main()
