"""`make bench` (`python -m fmnist_jax.benchmark`): our training speed against TF Keras
and PyTorch (where installed) on one machine in one run, each measurement in a fresh
child process: scanned and step-by-step img/s, real against synthetic input, compile
time, evaluation img/s, peak memory, the CPU ablation, cnn4's time to accuracy, and a
per-operation profile (`--profile`). cli.py has the options; the results go to
docs/benchmark.json and docs/PERFORMANCE.md.

Modules: common (configs, child processes, the network field by field), jax_bench,
keras_bench, torch_bench (one per framework), markdown_block (the docs block), cli.
The names below are what tests and docs use.
"""

from fmnist_jax.benchmark.cli import main
from fmnist_jax.benchmark.common import load_config, network
from fmnist_jax.benchmark.jax_bench import compile_synthetic_chunk, profile_ops
from fmnist_jax.benchmark.keras_bench import keras_model
from fmnist_jax.benchmark.markdown_block import BEGIN, END, markdown, markers, update_markdown
from fmnist_jax.benchmark.torch_bench import count_parameters as torch_count_parameters
from fmnist_jax.benchmark.torch_bench import torch_model

__all__ = [
    "BEGIN",
    "END",
    "compile_synthetic_chunk",
    "keras_model",
    "load_config",
    "main",
    "markdown",
    "markers",
    "network",
    "profile_ops",
    "torch_count_parameters",
    "torch_model",
    "update_markdown",
]
