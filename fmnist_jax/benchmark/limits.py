"""What the machine allows: its float32 matmul peak measured in the same run (XLA's dot
as our programs compile it, and NumPy's BLAS), a config's training FLOPs per image
counted from its network, each framework's share of that peak, and the class of
hardware (e.g. 'Zen 4 / AVX-512') that a run's results are filed under."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any

from fmnist_jax.benchmark.common import network

MATMUL_SIZE = 4096  # size x size by size x size: 137 GFLOP, under a second on two cores.
MATMUL_REPEATS = 5  # The best of these counts (after one warm-up).
INPUT_SIZE, INPUT_CHANNELS = 28, 1  # Fashion-MNIST images.


def conv_flops(x_shape: tuple[int, ...], k_shape: tuple[int, ...], padding: str) -> int:
    """Forward FLOPs of one stride-1 NHWC convolution of the batch `x_shape` (HWIO kernel,
    'SAME' or 'VALID'): two per multiply-add, padded taps included."""
    k, out = k_shape[0], x_shape[1]
    out = out if padding == "SAME" else out - k + 1
    return 2 * x_shape[0] * out * out * k * k_shape[1] * k_shape[2] * k_shape[3]


def layer_flops(config: Any) -> list[int]:
    """Forward FLOPs per image of each convolution and dense layer of the config's
    network, logits included, in order: two per multiply-add. Biases, batch norm,
    activations, pooling and the loss are not counted (a few per cent of cnn4's)."""
    net = network(config)
    flops: list[int] = []
    channels, size = INPUT_CHANNELS, INPUT_SIZE
    for block in net.conv:
        k = block.kernel_size
        flops.append(conv_flops((1, size, size, channels), (k, k, channels, block.features), block.padding))
        size = size if block.padding == "SAME" else size - k + 1
        channels = block.features
        size = size // 2 if net.pool else size  # 2x2 pooling floors odd sizes.
    width = channels * size * size
    for out in [w for w, _ in net.dense] + [net.num_classes]:
        flops.append(2 * width * out)
        width = out
    return flops


def training_flops_per_image(config: Any) -> int:
    """One training step's FLOPs per image: the forward pass, then per layer the kernel
    gradient (as many FLOPs as its forward) and the input gradient (as many again),
    except the first layer's, which nothing needs: 3x the forward less the first layer."""
    flops = layer_flops(config)
    return 3 * sum(flops) - flops[0]


def peak_share(images_per_second: float, flops_per_image: float, peak_gflops: float) -> float:
    """The fraction of the matmul peak that a training rate's arithmetic amounts to."""
    return images_per_second * flops_per_image / (peak_gflops * 1e9)


def cpu_class(cpu: dict[str, Any]) -> str:
    """'Zen 4 / AVX-512', 'Zen 3 / AVX2', ...: the generation (else vendor, family and
    model numbers) and the widest vector unit, from runtime.cpu_features()."""
    if cpu.get("generation"):
        kind = cpu["generation"]
    elif cpu.get("family") is not None:
        kind = f"{cpu['vendor'] or cpu['model_name']} family {cpu['family']} model {cpu['model']}"
    else:
        kind = cpu["model_name"]
    vector = "AVX-512" if cpu.get("avx512f") else "AVX2" if cpu.get("avx2") else "no AVX2"
    return f"{kind} / {vector}"


def hardware() -> dict[str, Any]:
    """The CPU's features and the class the results are filed under: the CPU's class
    on the CPU backend, else the accelerator's kind."""
    import jax

    from fmnist_jax import runtime

    cpu = runtime.cpu_features()
    backend = jax.default_backend()
    kind = cpu_class(cpu) if backend == "cpu" else jax.devices()[0].device_kind
    return {"class": kind, "backend": backend, "cpu": cpu}


def _best_seconds(run: Callable[[], Any], repeats: int) -> float:
    run()  # Warm-up (and compilation).
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return min(times)


def _blas_name() -> str:
    import numpy as np

    try:
        return str(np.__config__.CONFIG["Build Dependencies"]["blas"]["name"])
    except (AttributeError, KeyError, TypeError):
        return "unknown"


def matmul_peak(size: int = MATMUL_SIZE, repeats: int = MATMUL_REPEATS) -> dict[str, Any]:
    """The machine's float32 matmul GFLOP/s: size x size by size x size on every core,
    the best of `repeats`, through XLA's dot (with fmnist_jax's XLA flags, as our
    programs compile it) and NumPy's BLAS. The limit is the faster of the two on the
    CPU backend; on an accelerator, XLA's (the device's). Beside it, for reference and
    not a limit: XLA's dot of the same matrices in bfloat16 with float32 sums (on CPUs
    with AVX512_BF16 or AMX, a faster kernel than float32's)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    da, db = jax.device_put(a), jax.device_put(b)
    dot = jax.jit(jnp.dot)
    flops = 2 * size**3
    xla = flops / _best_seconds(lambda: dot(da, db).block_until_ready(), repeats) / 1e9
    blas = flops / _best_seconds(lambda: np.dot(a, b), repeats) / 1e9
    ha, hb = da.astype(jnp.bfloat16), db.astype(jnp.bfloat16)
    half_dot = jax.jit(functools.partial(jnp.dot, preferred_element_type=jnp.float32))
    xla_bf16 = flops / _best_seconds(lambda: half_dot(ha, hb).block_until_ready(), repeats) / 1e9
    return {
        "size": size,
        "repeats": repeats,
        "cores": os.cpu_count(),
        "backend": jax.default_backend(),
        "xla_gflops": xla,
        "numpy_gflops": blas,
        "xla_bf16_gflops": xla_bf16,
        "numpy_blas": _blas_name(),
        "gflops": max(xla, blas) if jax.default_backend() == "cpu" else xla,
    }
