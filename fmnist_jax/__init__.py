"""fmnist_jax: functional JAX/Flax experiments on Fashion-MNIST."""

import os

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
