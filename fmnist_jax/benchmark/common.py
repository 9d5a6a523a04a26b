"""What every part of the benchmark shares: configs (with overrides), how many steps a
timed dispatch runs, the steady-state clock of the Keras and PyTorch runs, peak memory,
the child processes, and the config's network read field by field for the Keras and
PyTorch builders."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from fmnist_jax import input_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET_ACCURACY = 0.9156  # Seed 000's cnn4 test accuracy.


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB.


def load_config(name: str) -> Any:
    """configs/<name>.py's config; `name+key=value+...` overrides top-level fields
    (values as Python literals), e.g. `cnn4_accelerator+batch_size=4096`."""
    sys.path.insert(0, ROOT)
    base, *overrides = name.split("+")
    config = importlib.import_module(f"configs.{base}").get_config()
    for item in overrides:
        key, sep, value = item.partition("=")
        parent, _, field = key.rpartition(".")
        target = config.model if parent == "model" else config
        # Top-level fields must exist; model fields may be any of the model's (e.g. pool_op).
        if not sep or parent not in ("", "model") or (target is config and field not in config):
            raise ValueError(f"{name}: override {item!r} is not key=value for a field of configs/{base}.py")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        setattr(target, field, parsed)
    return config


def timed_steps(config: Any, accelerator: bool = False) -> int:
    """Steps per timed dispatch: about 5 s of CPU work, at most one epoch; on an
    accelerator one whole epoch (steps are short there)."""
    steps_per_epoch = input_pipeline.num_train_examples(config.validation_fraction) // config.batch_size
    if accelerator:
        return steps_per_epoch
    per_image_work = 1 if config.model.name == "mlp" else 60  # Rough cost ratio cnn / mlp.
    return max(10, min(steps_per_epoch, 200_000 // (config.batch_size * per_image_work) + 1))


# Keras's and PyTorch's runs: steps left out at the start, and seconds of steady steps timed.
WARMUP_STEPS = 10
STEADY_SECONDS = 5.0


class StepClock:
    """The steady-state img/s of one long run, timed step by step.

    `mark(steps)` comes after each step (or each group of steps run as one call); the
    time between two consecutive marks is those steps' time. Left out: everything
    before the first mark (the run's start, tracing, compiling), every interval that
    starts within the first `warmup_steps` steps, and the gap after `restart()` (called
    where something other than steps comes next, e.g. Keras's end of an epoch). The rate
    is the steady steps' images over the sum of their times.
    """

    def __init__(
        self, batch: int, warmup_steps: int = WARMUP_STEPS, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.batch, self.warmup_steps, self.clock = batch, warmup_steps, clock
        self.steps = 0  # Steps run so far, warm-up included.
        self.steady_steps = 0
        self.steady_seconds = 0.0
        self._last: float | None = None

    def mark(self, steps: int = 1) -> None:
        now = self.clock()
        if self._last is not None and self.steps >= self.warmup_steps:
            self.steady_steps += steps
            self.steady_seconds += now - self._last
        self.steps += steps
        self._last = now

    def restart(self) -> None:
        self._last = None

    def result(self) -> dict[str, Any]:
        """img/s of the steady steps, and what it was measured on."""
        if not self.steady_steps or self.steady_seconds <= 0:
            raise RuntimeError(f"no steady step was timed in {self.steps} steps: the run was too short")
        return {
            "train_images_per_second": self.steady_steps * self.batch / self.steady_seconds,
            "steady_steps": self.steady_steps,
            "steady_seconds": self.steady_seconds,
            "warmup_steps": self.warmup_steps,
        }


def machine() -> str:
    from fmnist_jax import runtime

    return runtime.machine_description()


def run_child(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs one measurement in a fresh process and returns its JSON result."""
    command = [sys.executable, "-m", "fmnist_jax.benchmark", *args]
    proc = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})}
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


# ------------------------------------------------- the network, field by field


@dataclasses.dataclass(frozen=True)
class ConvBlock:
    """conv [+BN] + activation [+2x2 max pool] [+dropout], as fmnist_jax/models.py's CNN."""

    features: int
    kernel_size: int
    padding: str  # 'SAME' or 'VALID'.
    dropout: float


@dataclasses.dataclass(frozen=True)
class Network:
    """A config's network as fmnist_jax/models.py builds it: conv blocks (none for an
    MLP), flatten, dense layers with their dropout, then the logits. Read from our own
    module, so defaults and per-layer fields resolve as ours do; `pool_op` and `conv_op`
    only choose how our operations are computed and have no counterpart here."""

    conv: tuple[ConvBlock, ...]
    dense: tuple[tuple[int, float], ...]  # (width, dropout rate) per hidden dense layer.
    activation: str
    batch_norm: bool = False
    pool: bool = False
    bn_momentum: float = 0.99  # Keras's convention: the running statistics' decay.
    bn_epsilon: float = 1e-3
    num_classes: int = 10


def network(config: Any) -> Network:
    """`config.model`'s network, every field resolved (see Network)."""
    from fmnist_jax import models

    m = models.create_model(config.model)
    if isinstance(m, models.MLP):
        dense = zip(m.hidden, models.per_layer(m.dropout, len(m.hidden), "dropout"), strict=True)
        return Network(conv=(), dense=tuple(dense), activation=m.activation, num_classes=m.num_classes)
    if not isinstance(m, models.CNN):
        raise ValueError(f"no Keras or PyTorch counterpart for {type(m).__name__}")
    n = len(m.conv_features)
    conv = zip(
        m.conv_features,
        models.per_layer(m.kernel_size, n, "kernel_size"),
        models.per_layer(m.padding, n, "padding"),
        models.per_layer(m.conv_dropout, n, "conv_dropout"),
        strict=True,
    )
    dense_rates = models.per_layer(m.dense_dropout, len(m.dense_features), "dense_dropout")
    return Network(
        conv=tuple(ConvBlock(f, k, p.upper(), r) for f, k, p, r in conv),
        dense=tuple(zip(m.dense_features, dense_rates, strict=True)),
        activation=m.activation,
        batch_norm=m.batch_norm,
        pool=m.pool,
        bn_momentum=m.bn_momentum,
        bn_epsilon=m.bn_epsilon,
        num_classes=m.num_classes,
    )
