"""PyTorch's side (where `torch` imports): the config's network in PyTorch and its
eager training speed on the same batches."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from typing import Any

from fmnist_jax import input_pipeline
from fmnist_jax.benchmark.common import ConvBlock, load_config, network, peak_rss_mib, timed_steps

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


def _epoch(model: Any, x: Any, y: Any, k: int, batch: int, bf16: bool) -> Callable[[], None]:
    """One timed run: `k` Adam steps over the batches of (x, y), synchronized on CUDA."""
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def autocast() -> Any:
        if bf16:
            return torch.autocast(x.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def epoch() -> None:
        for i in range(k):
            opt.zero_grad()
            with autocast():
                loss = torch.nn.functional.cross_entropy(
                    model(x[i * batch : (i + 1) * batch]), y[i * batch : (i + 1) * batch]
                )
            loss.backward()
            opt.step()
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    return epoch


def torch_worker(name: str) -> dict[str, Any]:
    """PyTorch eager on the same batches (the network as `torch_model` builds it).

    On a CUDA machine the model and the timed batches live on the GPU, cuDNN may
    pick its fastest kernels (`benchmark=True`), and a bfloat16 config runs under
    `torch.autocast(bfloat16)`, as ours computes in bfloat16 with float32 parameters.
    """
    import numpy as np
    import torch

    config = load_config(name)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = True
    model = torch_model(config).to(device)
    splits = input_pipeline.load_splits(config.data_dir, config.validation_fraction, config.split_seed)
    batch = config.batch_size
    k = timed_steps(config, cuda)
    x = torch.from_numpy(splits["train"].images[: k * batch].astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    y = torch.from_numpy(splits["train"].labels[: k * batch].astype(np.int64))
    x, y = x.contiguous().to(device), y.to(device)
    bf16 = config.compute_dtype == "bfloat16"
    epoch = _epoch(model, x, y, k, batch, bf16)
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
