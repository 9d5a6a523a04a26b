"""`make bench` (`python -m fmnist_jax.benchmark`): our training speed against TF Keras
and PyTorch (where installed) on one machine in one run, each measurement in a fresh
child process: scanned and step-by-step img/s, real against synthetic input, compile
time, evaluation img/s, peak memory, Keras's and PyTorch's setups timed in steady
state, the machine's float32 matmul peak and each framework's share of it, the CPU
ablation, cnn4's time to accuracy, and a per-operation profile (`--profile`). cli.py
has the options; the results go to docs/benchmark.json and docs/PERFORMANCE.md (the
block of the machine's hardware class).

Modules: common (configs, child processes, the steady-state clock, the network field
by field), jax_bench, keras_bench, torch_bench (one per framework), limits (matmul
peak, FLOPs per image, hardware class), markdown_block (the docs blocks), cli.
The names below are what tests and docs use.
"""

from fmnist_jax.benchmark.cli import main
from fmnist_jax.benchmark.common import StepClock, load_config, network
from fmnist_jax.benchmark.jax_bench import compile_synthetic_chunk, profile_ops
from fmnist_jax.benchmark.keras_bench import keras_model
from fmnist_jax.benchmark.limits import cpu_class, peak_share, training_flops_per_image
from fmnist_jax.benchmark.markdown_block import (
    BEGIN,
    END,
    class_markers,
    markdown,
    markers,
    update_markdown,
)
from fmnist_jax.benchmark.torch_bench import count_parameters as torch_count_parameters
from fmnist_jax.benchmark.torch_bench import torch_model

__all__ = [
    "BEGIN",
    "END",
    "StepClock",
    "class_markers",
    "compile_synthetic_chunk",
    "cpu_class",
    "keras_model",
    "load_config",
    "main",
    "markdown",
    "markers",
    "network",
    "peak_share",
    "profile_ops",
    "torch_count_parameters",
    "torch_model",
    "training_flops_per_image",
    "update_markdown",
]
