"""PyTorch's side (where `torch` imports): the config's network in PyTorch and its
eager steady-state training speed, in its default layout and channels_last, on the
same batches."""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Callable
from typing import Any

from fmnist_jax import input_pipeline
from fmnist_jax.benchmark.common import (
    STEADY_SECONDS,
    ConvBlock,
    StepClock,
    load_config,
    network,
    peak_rss_mib,
)

# fmnist_jax/models.py's activations by name (flax's gelu is the tanh approximation).
ACTIVATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "relu": ("ReLU", {}),
    "gelu": ("GELU", {"approximate": "tanh"}),
    "tanh": ("Tanh", {}),
    "sigmoid": ("Sigmoid", {}),
    "elu": ("ELU", {}),
    "swish": ("SiLU", {}),
}


def _activation(name: str) -> Any:
    from torch import nn

    module, kwargs = ACTIVATIONS[name]
    return getattr(nn, module)(**kwargs)


def _conv(block: ConvBlock, channels: int) -> list[Any]:
    """The block's convolution with our padding: 'SAME' pads (k-1)//2 before and k//2
    after, as JAX and TF do. An even kernel gets that as an explicit ZeroPad2d (rather
    than padding='same', which pads alike through a hidden copy, with a warning)."""
    from torch import nn

    k = block.kernel_size
    before, after = ((k - 1) // 2, k // 2) if block.padding == "SAME" else (0, 0)
    if before == after:
        return [nn.Conv2d(channels, block.features, k, padding=before)]
    return [nn.ZeroPad2d((before, after, before, after)), nn.Conv2d(channels, block.features, k)]


def torch_model(config: Any) -> Any:
    """The config's network in PyTorch (NCHW input), built from the same fields as
    ours and Keras's (common.network): layers, padding, activation, dropout and BN
    constants alike (BN momentum as PyTorch counts it: 1 - ours). PyTorch's own
    initializers."""
    from torch import nn

    net = network(config)
    layers: list[Any] = []
    channels, size = 1, 28
    for block in net.conv:
        layers += _conv(block, channels)
        if net.batch_norm:
            layers.append(nn.BatchNorm2d(block.features, eps=net.bn_epsilon, momentum=1 - net.bn_momentum))
        layers.append(_activation(net.activation))
        size = size if block.padding == "SAME" else size - block.kernel_size + 1
        if net.pool:
            layers.append(nn.MaxPool2d(2))  # Floors odd sizes, as ours.
            size //= 2
        if block.dropout:
            layers.append(nn.Dropout(block.dropout))
        channels = block.features
    layers.append(nn.Flatten())
    width_in = channels * size * size
    for width, rate in net.dense:
        layers += [nn.Linear(width_in, width), _activation(net.activation)]
        if rate:
            layers.append(nn.Dropout(rate))
        width_in = width
    layers.append(nn.Linear(width_in, net.num_classes))
    return nn.Sequential(*layers)


def count_parameters(model: Any) -> int:
    """Parameters plus batch norm's running mean and variance: what ours (params +
    batch_stats) and Keras count; not PyTorch's num_batches_tracked."""
    stats = ("running_mean", "running_var")
    buffers = sum(b.numel() for name, b in model.named_buffers() if name.rpartition(".")[2] in stats)
    return sum(p.numel() for p in model.parameters()) + buffers


# glibc malloc's thresholds (mallopt's M_TRIM_THRESHOLD, M_MMAP_THRESHOLD) for "mallopt" setups.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEPT_BYTES = 256 << 20


def keep_freed_memory() -> None:
    """glibc malloc's mmap and trim thresholds raised to KEPT_BYTES for this process: the
    memory of a step's freed tensors is then reused by the next step instead of being
    unmapped and faulted in again (what a caching allocator such as jemalloc, which
    PyTorch's CPU tuning advice names, also gives). Process-wide; glibc only."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    for option in (M_TRIM_THRESHOLD, M_MMAP_THRESHOLD):
        if libc.mallopt(option, KEPT_BYTES) != 1:
            raise RuntimeError(f"glibc's mallopt({option}, {KEPT_BYTES}) failed")


# PyTorch's setups, each timed in its own child: its default layout and channels_last
# (model and input in NHWC memory order, which oneDNN's CPU convolutions prefer), each
# also with freed memory kept (`keep_freed_memory`; where the C library is glibc), which
# made PyTorch faster and steadier on these machines (docs/PERFORMANCE.md has the numbers).
TORCH_SETUPS: dict[str, dict[str, Any]] = {
    "default (NCHW)": {},
    "channels_last": {"channels_last": True},
}
if platform.libc_ver()[0] == "glibc":
    TORCH_SETUPS |= {f"{name}, mallopt": {**setup, "mallopt": True} for name, setup in TORCH_SETUPS.items()}
MAX_EPOCHS = 20  # A steady run's cap; it stops once STEADY_SECONDS of steady steps are timed.
CUDA_MARK_EVERY = 20  # On CUDA the clock is marked (and the device synchronized) every 20 steps.


def setup_options(setup: str) -> dict[str, Any]:
    """TORCH_SETUPS[setup], or a ValueError naming the setups there are."""
    if setup not in TORCH_SETUPS:
        raise ValueError(f"no PyTorch setup {setup!r}; there are {list(TORCH_SETUPS)}")
    return TORCH_SETUPS[setup]


def to_setup(model: Any, x: Any, setup: str) -> tuple[Any, Any]:
    """The model and input batch tensor laid out as TORCH_SETUPS[setup] says."""
    import torch

    if setup_options(setup).get("channels_last"):
        return model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    return model, x.contiguous()


def steady_train(
    model: Any,
    x: Any,
    y: Any,
    batch: int,
    steady_seconds: float = STEADY_SECONDS,
    bf16: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """PyTorch eager's steady-state training img/s in one long run: Adam steps over the
    batches of (x, y) in order, epoch after epoch, the clock marked after every step
    (on CUDA every CUDA_MARK_EVERY steps, synchronized) until `steady_seconds` of
    steady steps are timed (common.StepClock)."""
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    cuda = x.device.type == "cuda"
    every, per_epoch = (CUDA_MARK_EVERY if cuda else 1), len(x) // batch
    timer = StepClock(batch, clock=clock)
    for i in range(MAX_EPOCHS * per_epoch):
        j = i % per_epoch
        opt.zero_grad()
        autocast = torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            loss = torch.nn.functional.cross_entropy(
                model(x[j * batch : (j + 1) * batch]), y[j * batch : (j + 1) * batch]
            )
        loss.backward()
        opt.step()
        if (i + 1) % every == 0:
            if cuda:
                torch.cuda.synchronize()
            timer.mark(every)
            if timer.steady_seconds >= steady_seconds:
                break
    return timer.result()


def torch_worker(name: str, setup: str = "default (NCHW)", steady_seconds: float = STEADY_SECONDS) -> dict:
    """PyTorch eager in one of TORCH_SETUPS on the training split's batches in order
    (the network as `torch_model` builds it), timed in steady state (`steady_train`).

    On a CUDA machine the model and the batches live on the GPU, cuDNN may pick its
    fastest kernels (`benchmark=True`), and a bfloat16 config runs under
    `torch.autocast(bfloat16)`, as ours computes in bfloat16 with float32 parameters.
    """
    import numpy as np
    import torch

    if setup_options(setup).get("mallopt"):
        keep_freed_memory()
    config = load_config(name)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = True
    splits = input_pipeline.load_splits(config.data_dir, config.validation_fraction, config.split_seed)
    split = splits["train"]
    batch = config.batch_size
    n = len(split) // batch * batch
    x = torch.from_numpy(split.images[:n].astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    y = torch.from_numpy(split.labels[:n].astype(np.int64)).to(device)
    model, x = to_setup(torch_model(config).to(device), x.to(device), setup)
    bf16 = config.compute_dtype == "bfloat16"
    result = steady_train(model, x, y, batch, steady_seconds, bf16)
    return {
        "framework": "torch",
        "setup": setup,
        "version": torch.__version__,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "threads": torch.get_num_threads(),
        "autocast_bfloat16": bf16,
        **result,
        "peak_rss_mib": peak_rss_mib(),
    }
