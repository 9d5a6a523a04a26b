"""oneDNN's convolutions inside XLA:CPU programs, through XLA's FFI.

`fmnist_jax/csrc/onednn_conv.cc` runs a stride-1 NHWC/HWIO convolution and its kernel
gradient on oneDNN (the CPU library PyTorch's convolutions use). It is compiled on first
use against Debian's `libdnnl-dev` (`make onednn`, part of `make venv`, installs it as
root) into ~/.cache/fmnist_jax/onednn (or $FMNIST_JAX_ONEDNN_CACHE), one file per source
and jaxlib version, so later processes only load it. `model.conv_op='auto'` (ops.py) takes it on
CPU when it builds and loads, and XLA's convolutions otherwise; docs/PERFORMANCE.md has
what it buys.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "onednn_conv.cc")
TARGETS = {"conv": "fmnist_jax_onednn_conv", "kernel_grad": "fmnist_jax_onednn_kernel_grad"}
Padding = tuple[tuple[int, int], tuple[int, int]]


class Unavailable(RuntimeError):
    """oneDNN's convolutions cannot be used here (the message says why, in one line)."""


def cache_dir() -> str:
    default = os.path.join(os.path.expanduser("~"), ".cache", "fmnist_jax", "onednn")
    return os.environ.get("FMNIST_JAX_ONEDNN_CACHE") or default


def library_path() -> str:
    """The compiled library's path: named by a hash of the source and jaxlib's version."""
    with open(SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read() + jaxlib.__version__.encode()).hexdigest()[:16]
    return os.path.join(cache_dir(), f"libfmnist_jax_onednn_{digest}.so")


def compiler() -> str:
    return os.environ.get("CXX", "g++")


def compile_command(output: str) -> list[str]:
    return [
        compiler(), "-O2", "-std=c++17", "-shared", "-fPIC", "-w", SOURCE, "-o", output,
        "-I", jax.ffi.include_dir(), "-ldnnl",
    ]  # fmt: skip


def build(path: str) -> None:
    """Compiles the library to `path`, through a temporary file renamed into place, so a
    concurrent process never loads half a file."""
    if shutil.which(compiler()) is None:
        raise Unavailable(f"no C++ compiler ({compiler()}) to build oneDNN's convolutions")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
    except OSError as e:
        raise Unavailable(
            f"cannot write oneDNN's convolutions to {os.path.dirname(path)}: {e.strerror}"
        ) from None
    os.close(fd)
    try:
        done = subprocess.run(compile_command(tmp), capture_output=True, text=True)
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["no output"])[0]
            raise Unavailable(f"building oneDNN's convolutions failed (is libdnnl-dev installed?): {first}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@functools.cache
def load() -> None:
    """Builds the library if needed, loads it and registers its handlers with XLA (once
    per process); raises `Unavailable` with the reason where it cannot."""
    path = library_path()
    if not os.path.exists(path):
        build(path)
    try:
        lib = ctypes.cdll.LoadLibrary(path)
    except OSError as e:
        raise Unavailable(f"loading oneDNN's convolutions failed: {e}") from None
    for target, symbol in (("conv", "OnednnConv"), ("kernel_grad", "OnednnKernelGrad")):
        jax.ffi.register_ffi_target(TARGETS[target], jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")


@functools.cache
def unavailable_reason() -> str | None:
    """None where oneDNN's convolutions load on this machine, else why not (asked once per
    process: a failed build is not tried again at every convolution)."""
    try:
        load()
    except Unavailable as e:
        return str(e)
    return None


def usable() -> bool:
    """Whether `model.conv_op='auto'` takes oneDNN: a CPU backend and a library that loads."""
    return jax.default_backend() == "cpu" and unavailable_reason() is None


def _call(target: str, shape: tuple[int, ...], a: jax.Array, b: jax.Array, padding: Padding) -> jax.Array:
    load()
    (top, bottom), (left, right) = padding
    out = jax.ShapeDtypeStruct(shape, jnp.float32)
    call = jax.ffi.ffi_call(TARGETS[target], out, vmap_method="sequential")
    pads = {k: np.int64(v) for k, v in (("top", top), ("bottom", bottom), ("left", left), ("right", right))}
    return call(a, b.astype(a.dtype), **pads)


def conv(x: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
    """The stride-1 NHWC/HWIO convolution of float32 or bfloat16 operands, in float32."""
    (top, bottom), (left, right) = padding
    kh, kw, _, features = kernel.shape
    n, h, w, _ = x.shape
    shape = (n, h + top + bottom - kh + 1, w + left + right - kw + 1, features)
    return _call("conv", shape, x, kernel, padding)


def kernel_gradient(x: jax.Array, g: jax.Array, padding: Padding) -> jax.Array:
    """d/dkernel of `conv(x, kernel, padding)` for output cotangent `g`, in float32."""
    (top, bottom), (left, right) = padding
    kh = x.shape[1] + top + bottom - g.shape[1] + 1
    kw = x.shape[2] + left + right - g.shape[2] + 1
    return _call("kernel_grad", (kh, kw, x.shape[3], g.shape[3]), x, g, padding)
