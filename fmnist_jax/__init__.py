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
# FMNIST_JAX_CPU_FLAGS=0 leaves jaxlib's defaults (the benchmark's ablation does).
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=dot,reduce",)
# XLA:CPU aborts the whole process when one process's devices reach a collective more
# than 60 s apart (a warning after 20 s, then this flag's 40 s). Forced host devices
# share the cores: eight of them on a busy 2-core machine have drifted that far in an
# evaluation, so they wait 10 minutes more instead (tests/test_collectives.py).
CPU_COLLECTIVE_FLAGS = ("--xla_cpu_collective_call_terminate_timeout_seconds=600",)


def _add_xla_flags(defaults: tuple[str, ...]) -> None:
    """Appends each default to XLA_FLAGS unless XLA_FLAGS already names its option.
    Set before JAX's CPU backend starts; the flags only concern the CPU backend."""
    flags = os.environ.get("XLA_FLAGS", "")
    extra = [f for f in defaults if f.split("=")[0] not in flags]
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


_add_xla_flags(CPU_COLLECTIVE_FLAGS)
if os.environ.get("FMNIST_JAX_CPU_FLAGS", "1") != "0":
    _add_xla_flags(CPU_XLA_FLAGS)

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
