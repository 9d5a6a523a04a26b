"""The convolution, pooling and batch-norm block our CNNs use, written for XLA:CPU's fast paths.

Same values as the textbook operations (tested to the bit; the fused block's gradient,
`taps_conv` and `kernel_gradient` in slices to float32 rounding); each is chosen by a
`model` config field, so the benchmark's ablation undoes one by a config override:
`model.pool_op` ('maxima' or 'reduce_max'), `model.conv_op` ('custom', 'onednn', 'auto'
or 'lax'),
`model.bn_op` ('fused' or 'flax': batch norm, ReLU and pooling as `bn_relu_pool`, or as
three steps), `model.taps_conv` and `model.kernel_grad_chunks`. docs/PERFORMANCE.md has
what each buys.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from fmnist_jax import onednn


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, flooring odd sizes (as Keras's MaxPooling2D).

    Written as two elementwise maxima (rows, then columns) of a reshaped view:
    under XLA:CPU its gradient is a few fused selects, much cheaper than either
    `nn.max_pool`'s select-and-scatter or a reduce-max over the window, with the
    same forward values (docs/PERFORMANCE.md has the timings).
    """
    n, h, w, c = x.shape
    h, w = h // 2 * 2, w // 2 * 2
    rows = x[:, :h, :w, :].reshape(n, h // 2, 2, w, c)
    x = jnp.maximum(rows[:, :, 0], rows[:, :, 1]).reshape(n, h // 2, w // 2, 2, c)
    return jnp.maximum(x[:, :, :, 0], x[:, :, :, 1])


_NHWC = ("NHWC", "HWIO", "NHWC")
Padding = tuple[tuple[int, int], tuple[int, int]]


def _conv(x: jax.Array, kernel: jax.Array, padding: Padding, library: str = "xla") -> jax.Array:
    return _batchable_conv(padding, library)(x, kernel)


def _plain_conv(x: jax.Array, kernel: jax.Array, padding: Padding, library: str) -> jax.Array:
    if library == "onednn":  # Its output is float32: rounded as XLA's convolution rounds it.
        return onednn.conv(x, kernel, padding).astype(x.dtype)
    return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_NHWC)


@functools.cache
def _batchable_conv(padding: Padding, library: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The NHWC/HWIO convolution (XLA's, or oneDNN's with `library='onednn'`) with its
    own vmap rule.

    Under `jax.vmap` with batched kernels (best-of-N: one kernel per model) JAX's
    rule folds the models into one grouped convolution, which XLA:CPU runs about
    twice as slowly as the same convolutions one by one. This rule instead runs one
    ordinary convolution per model (the vmapped axis is a handful of models), and
    with only the images batched it folds that axis into the batch.
    """

    @jax.custom_batching.custom_vmap
    def conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
        return _plain_conv(x, kernel, padding, library)

    @conv.def_vmap
    def conv_vmap(axis_size: int, in_batched: Sequence[bool], x: jax.Array, kernel: jax.Array) -> Any:
        x_batched, kernel_batched = in_batched
        if not kernel_batched:  # (models, n, h, w, c) -> (models * n, h, w, c) and back.
            out = conv(x.reshape(-1, *x.shape[2:]), kernel)
            return out.reshape(axis_size, x.shape[1], *out.shape[1:]), True
        outs = [conv(x[i] if x_batched else x, kernel[i]) for i in range(axis_size)]
        return jnp.stack(outs), True

    return conv


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    padding: Padding,
    kernel_grad_chunks: int = 1,
    taps: bool = False,
    library: str = "xla",
) -> jax.Array:
    """Stride-1 NHWC/HWIO convolution whose two backward convolutions are written
    out in the same canonical NHWC/HWIO form as the forward one.

    Same values as `lax.conv_general_dilated` and its autodiff (tested to the bit).
    The reason: inside a `lax.scan` (the scanned training path) XLA:CPU leaves
    autodiff's backward convolutions in a transposed layout that its fast kernels do
    not take, and a cnn2_2x2 step ran 7x slower; written out, they stay fast.

    Three options trade the bits for speed (the same values up to float32 rounding;
    docs/PERFORMANCE.md has what each buys): `kernel_grad_chunks` > 1 computes the
    kernel gradient over slices of the batch (`kernel_gradient`), `taps` computes
    the forward convolution of a one-channel input as multiply-adds (`taps_conv`), and
    `library='onednn'` runs the convolutions and the kernel gradient on oneDNN
    (`fmnist_jax.onednn`; `kernel_grad_chunks` then has nothing to slice).
    """
    return _forward(x, kernel, padding, taps, library)


def _forward(x: jax.Array, kernel: jax.Array, padding: Padding, taps: bool, library: str) -> jax.Array:
    if taps and x.shape[-1] == 1:
        return taps_conv(x, kernel, padding)
    return _conv(x, kernel, padding, library)


def _conv2d_fwd(
    x: jax.Array, kernel: jax.Array, padding: Padding, kernel_grad_chunks: int, taps: bool, library: str
) -> tuple[jax.Array, Any]:
    return _forward(x, kernel, padding, taps, library), (x, kernel)


def _conv2d_bwd(
    padding: Padding, kernel_grad_chunks: int, taps: bool, library: str, residuals: Any, g: jax.Array
) -> tuple[jax.Array, jax.Array]:
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    (top, bottom), (left, right) = padding
    # d/dx: correlate g with the flipped kernel, in and out channels swapped.
    flipped = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))
    dx = _conv(g, flipped, ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right)), library)
    if library == "onednn":
        return dx, onednn.kernel_gradient(x, g, padding).astype(kernel.dtype)
    return dx, kernel_gradient(x, g, padding, kernel_grad_chunks)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def taps_conv(x: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
    """The convolution of a one-channel NHWC input as one multiply-add per kernel tap
    (a shifted view of the padded input times that tap's row of output weights), summed
    in row-major tap order: one elementwise pass that writes the output once.

    XLA:CPU runs such a convolution as a matrix product whose inner dimension is only
    the kernel's kh*kw taps, several times slower (docs/PERFORMANCE.md).
    """
    kh, kw = kernel.shape[:2]
    xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    h, w = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    out = xp[:, :h, :w] * kernel[0, 0, 0]
    for i, j in ((i, j) for i in range(kh) for j in range(kw) if i or j):
        out = out + xp[:, i : i + h, j : j + w] * kernel[i, j, 0]
    return out


def kernel_gradient(x: jax.Array, g: jax.Array, padding: Padding, chunks: int = 1) -> jax.Array:
    """d/dkernel of the convolution of `x` with output cotangent `g`: a convolution with
    the input channels as the batch and the batch as the features, or, with `chunks` > 1,
    one such convolution per slice of the batch (gcd(batch, chunks) equal slices), summed
    in order.

    One slice is autodiff's arithmetic (tested to the bit). On XLA:CPU this convolution's
    "kernel" is `g`'s whole spatial extent, unrolled into a patch matrix of 9x the input
    for a 3x3 kernel; per slice it is that much smaller, which for some layer shapes is
    faster (docs/PERFORMANCE.md has which and by how much).
    """
    n, k = x.shape[0], math.gcd(x.shape[0], chunks)
    # (slices, channels, h, w, batch / slices): each slice's operands contiguous.
    xs = jnp.transpose(x.reshape(k, n // k, *x.shape[1:]), (0, 4, 2, 3, 1))
    gs = jnp.transpose(g.reshape(k, n // k, *g.shape[1:]), (0, 2, 3, 1, 4))
    total = _conv(xs[0], gs[0], padding)
    for i in range(1, k):
        total = total + _conv(xs[i], gs[i], padding)
    return jnp.transpose(total, (1, 2, 0, 3))


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Any = None,
    rhs_dilation: Any = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
    kernel_grad_chunks: int = 1,
    taps: bool = False,
    library: str = "xla",
) -> jax.Array:
    """nn.Conv's hook: `conv2d` for what our models use (stride 1, no dilation or
    groups, NHWC), `lax.conv_general_dilated` for anything else (where
    `kernel_grad_chunks`, `taps` and `library` do not apply). `library='auto'` is
    'onednn' where `onednn.usable()`, else 'xla'."""
    plain = (
        tuple(window_strides) == (1, 1)
        and all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
        and feature_group_count == 1
        and lhs.ndim == 4
    )
    if not plain:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, precision=precision,
        )  # fmt: skip
    if isinstance(padding, str):
        sizes = rhs.shape[:2]
        pads = [((k - 1) // 2, k // 2) if padding == "SAME" else (0, 0) for k in sizes]
    else:
        pads = [tuple(p) for p in padding]
    if library == "auto":
        library = "onednn" if onednn.usable() else "xla"
    return conv2d(lhs, rhs, (tuple(pads[0]), tuple(pads[1])), kernel_grad_chunks, taps, library)


def reduce_max_pool_2x2(x: jax.Array) -> jax.Array:
    """The same pooling as one reduce-max over each reshaped 2x2 window (the ablation's)."""
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2, :]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


POOL_OPS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "maxima": max_pool_2x2,
    "reduce_max": reduce_max_pool_2x2,
}
CONV_OPS: dict[str, Callable[..., jax.Array]] = {
    "custom": conv_general_dilated,  # conv2d with written-out gradients and the per-model vmap rule.
    "onednn": functools.partial(conv_general_dilated, library="onednn"),  # conv2d on oneDNN.
    "auto": functools.partial(conv_general_dilated, library="auto"),  # "onednn" where usable, else "custom".
    "lax": lax.conv_general_dilated,  # What autodiff and JAX's own vmap rule make of it.
}


def _batch_stats(x: jax.Array, axis_name: str | None) -> tuple[jax.Array, jax.Array]:
    """flax BatchNorm's per-channel mean and variance: E[x] and E[x^2] (averaged over
    `axis_name`), the variance E[x^2] - E[x]^2 clipped at 0."""
    mean, mean_sq = x.mean((0, 1, 2)), lax.square(x).mean((0, 1, 2))
    if axis_name is not None:
        mean, mean_sq = lax.pmean(jnp.stack([mean, mean_sq]), axis_name)
    return mean, jnp.maximum(0.0, mean_sq - lax.square(mean))


def _share(x: jax.Array, partner: jax.Array) -> jax.Array:
    """1 where `x` is the larger of the pair, 1/2 where they are equal, else 0 (jnp.maximum's gradient)."""
    return jnp.where(x > partner, 1.0, jnp.where(x < partner, 0.0, 0.5))


def max_pool_2x2_vjp(x: jax.Array, g: jax.Array) -> jax.Array:
    """The gradient of `max_pool_2x2` at `x` for the pooled cotangent `g`, as one elementwise pass.

    Same as autodiff's (rows, then columns; a tie splits the gradient equally) up to rounding.
    """
    n, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    x6 = x[:, : 2 * h2, : 2 * w2].reshape(n, h2, 2, w2, 2, c)
    rows = jnp.maximum(x6, x6[:, :, ::-1])  # Each element's row-pair maximum.
    dx = g[:, :, None, :, None, :] * _share(rows, rows[:, :, :, :, ::-1]) * _share(x6, x6[:, :, ::-1])
    return jnp.pad(dx.reshape(n, 2 * h2, 2 * w2, c), ((0, 0), (0, h - 2 * h2), (0, w - 2 * w2), (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def bn_relu_pool(
    x: jax.Array,
    shift: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    epsilon: float,
    axis_name: str | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`max_pool_2x2(relu(BatchNorm(x + shift)))` in training mode, and the batch's mean and
    variance of `x + shift`.

    The same values as flax's BatchNorm, ReLU and `max_pool_2x2` one after the other
    (tested), in fewer passes over the large pre-pooling activations: batch norm with
    its statistics fixed is a per-channel affine map, monotonic, so pooling first picks
    the same element (the window's maximum where the channel's multiplier is >= 0, its
    minimum where it is negative), and the normalisation and ReLU run on the pooled
    quarter. The gradient is written out: one pass over `x` gives the whole input
    gradient (the pooling's, plus the statistics' per-channel terms).

    `shift` is the preceding convolution's bias, never added to `x`: training-mode batch
    norm subtracts it again with the mean, so it moves only the returned mean (which the
    running average takes), and its gradient is exactly the mean's cotangent (0 in a
    training step; autodiff through `x + shift` gives rounding noise instead).
    """
    return _bn_relu_pool_fwd(x, shift, scale, bias, epsilon, axis_name)[0]


def _bn_relu_pool_fwd(
    x: jax.Array, shift: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, axis_name: str | None
) -> tuple[tuple[jax.Array, jax.Array, jax.Array], Any]:
    mean, var = _batch_stats(x, axis_name)
    mul = lax.rsqrt(var + epsilon) * scale
    sign = jnp.where(mul < 0, -1.0, 1.0)
    # The window's element that BN maps highest. A reduction, so that XLA computes it once
    # (as elementwise maxima, it fuses them into every consumer of the output and runs them
    # again there, the next convolution's kernel-gradient transpose too).
    picked = reduce_max_pool_2x2(x * sign) * sign
    z = (picked - mean) * mul + bias
    return (jnp.maximum(z, 0.0), mean + shift, var), (x, picked, z, mean, var, scale, mul)


def _bn_relu_pool_bwd(epsilon: float, axis_name: str | None, res: Any, cts: Any) -> tuple[jax.Array, ...]:
    """The chain rule through out = relu(z), z = (picked - mean) * rsqrt(var + eps) * scale + bias,
    mean = E[x], var = E[x^2] - mean^2: per-channel sums over the pooled quarter, then one
    pass over x for the pooling's gradient plus d(mean)/dx = 1/count and d(E[x^2])/dx = 2x/count.
    The returned mean is mean + shift, so shift's gradient is the mean's cotangent."""
    x, picked, z, mean, var, scale, mul = res
    g, g_mean, g_var = cts
    gz = jnp.where(z > 0, g, 0.0)
    sum_g, sum_gx = gz.sum((0, 1, 2)), (gz * (picked - mean)).sum((0, 1, 2))
    inv = lax.rsqrt(var + epsilon)
    d_var = g_var - 0.5 * sum_gx * scale * inv / (var + epsilon)
    d_mean_sq = jnp.where(var > 0, d_var, 0.0)
    d_mean = g_mean - mul * sum_g - 2.0 * mean * d_mean_sq
    if axis_name is not None:
        d_mean, d_mean_sq = lax.pmean(jnp.stack([d_mean, d_mean_sq]), axis_name)
    count = x.shape[0] * x.shape[1] * x.shape[2]
    sign = jnp.where(mul < 0, -1.0, 1.0)
    dx = max_pool_2x2_vjp(x * sign, gz * mul) + (d_mean + 2.0 * d_mean_sq * x) / count
    return dx, g_mean, sum_gx * inv, sum_g


bn_relu_pool.defvjp(_bn_relu_pool_fwd, _bn_relu_pool_bwd)
