"""fmnist_jax: functional JAX/Flax experiments on Fashion-MNIST."""

import os
import time

_IMPORTED_AT = time.perf_counter()


def seconds_since_process_start() -> float:
    """Seconds since this process started (Linux: from /proc; else since this package's import)."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # Field 22: start time in ticks.
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED_AT


# XLA:CPU's fastest path for these models on this jaxlib: YNNPACK for matmuls and
# reductions, XLA's own (Eigen) kernels for convolutions. 1.4-1.5x faster training
# steps for cnn4 than jaxlib's default; docs/PERFORMANCE.md has the measurements.
# Set before JAX's CPU backend starts; an XLA_FLAGS that already names the option wins,
# and FMNIST_JAX_CPU_FLAGS=0 leaves jaxlib's defaults (the benchmark's ablation does).
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=dot,reduce",)


def _set_default_xla_flags() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    extra = [f for f in CPU_XLA_FLAGS if f.split("=")[0] not in flags]
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


if os.environ.get("FMNIST_JAX_CPU_FLAGS", "1") != "0":
    _set_default_xla_flags()

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
