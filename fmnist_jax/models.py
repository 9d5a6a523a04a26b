"""Pure flax.linen networks whose shape comes entirely from config fields.

Every seed model is an `MLP` or a `CNN` with different fields; see configs/.
Initialisation and batch-norm constants follow Keras's defaults (Glorot-uniform
kernels, zero biases, BN momentum 0.99 and epsilon 1e-3), so parameter counts
(params + batch_stats) equal the Keras models' exactly. Models output logits.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax import lax

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "elu": nn.elu,
    "swish": nn.swish,
}
MODELS = ("mlp", "cnn")
PADDINGS = ("SAME", "VALID")

_kernel_init = nn.initializers.glorot_uniform()


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


def _conv(x: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
    return _batchable_conv(padding)(x, kernel)


@functools.cache
def _batchable_conv(padding: Padding) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The NHWC/HWIO convolution with its own vmap rule.

    Under `jax.vmap` with batched kernels (best-of-N: one kernel per model) JAX's
    rule folds the models into one grouped convolution, which XLA:CPU runs about
    twice as slowly as the same convolutions one by one. This rule instead runs one
    ordinary convolution per model (the vmapped axis is a handful of models), and
    with only the images batched it folds that axis into the batch.
    """

    @jax.custom_batching.custom_vmap
    def conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_NHWC)

    @conv.def_vmap
    def conv_vmap(axis_size: int, in_batched: Sequence[bool], x: jax.Array, kernel: jax.Array) -> Any:
        x_batched, kernel_batched = in_batched
        if not kernel_batched:  # (models, n, h, w, c) -> (models * n, h, w, c) and back.
            out = conv(x.reshape(-1, *x.shape[2:]), kernel)
            return out.reshape(axis_size, x.shape[1], *out.shape[1:]), True
        outs = [conv(x[i] if x_batched else x, kernel[i]) for i in range(axis_size)]
        return jnp.stack(outs), True

    return conv


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
    """Stride-1 NHWC/HWIO convolution whose two backward convolutions are written
    out in the same canonical NHWC/HWIO form as the forward one.

    Same values as `lax.conv_general_dilated` and its autodiff (tested to the bit).
    The reason: inside a `lax.scan` (the scanned training path) XLA:CPU leaves
    autodiff's backward convolutions in a transposed layout that its fast kernels do
    not take, and a cnn2_2x2 step ran 7x slower; written out, they stay fast.
    """
    return _conv(x, kernel, padding)


def _conv2d_fwd(x: jax.Array, kernel: jax.Array, padding: Padding) -> tuple[jax.Array, Any]:
    return _conv(x, kernel, padding), (x, kernel)


def _conv2d_bwd(padding: Padding, residuals: Any, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    (top, bottom), (left, right) = padding
    # d/dx: correlate g with the flipped kernel, in and out channels swapped.
    flipped = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))
    dx = _conv(g, flipped, ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right)))
    # d/dkernel: input channels as the batch, the batch as the features.
    dk = _conv(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3)), padding)
    return dx, jnp.transpose(dk, (1, 2, 0, 3))


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Any = None,
    rhs_dilation: Any = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
) -> jax.Array:
    """nn.Conv's hook: `conv2d` for what our models use (stride 1, no dilation or
    groups, NHWC), `lax.conv_general_dilated` for anything else."""
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
    return conv2d(lhs, rhs, (tuple(pads[0]), tuple(pads[1])))


def _per_layer(value: Any, count: int, name: str) -> tuple[Any, ...]:
    """Broadcasts a scalar field to `count` layers, or checks a sequence's length."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"model.{name} has {len(value)} entries for {count} layers")
        return tuple(value)
    return (value,) * count


class MLP(nn.Module):
    """Flatten, then Dense + activation (+ dropout) per hidden width, then Dense logits."""

    hidden: Sequence[int]
    num_classes: int = 10
    activation: str = "relu"
    dropout: float | Sequence[float] = 0.0
    dtype: Any = jnp.float32  # Compute dtype; parameters stay float32.

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        rates = _per_layer(self.dropout, len(self.hidden), "dropout")
        x = x.reshape((x.shape[0], -1)).astype(self.dtype)
        for width, rate in zip(self.hidden, rates, strict=True):
            x = act(nn.Dense(width, kernel_init=_kernel_init, dtype=self.dtype)(x))
            if rate:
                x = nn.Dropout(rate, deterministic=not train)(x)
        logits = nn.Dense(self.num_classes, kernel_init=_kernel_init, dtype=self.dtype)(x)
        return logits.astype(jnp.float32)


class CNN(nn.Module):
    """Conv blocks (conv [+BN] + activation [+2x2 max pool] [+dropout]), then dense head.

    Per-block fields (`kernel_size`, `padding`, `conv_dropout`) take either one
    value for all blocks or a sequence with one value per block.
    """

    conv_features: Sequence[int]
    dense_features: Sequence[int] = ()
    num_classes: int = 10
    kernel_size: int | Sequence[int] = 3
    padding: str | Sequence[str] = "SAME"
    batch_norm: bool = False
    pool: bool = True
    conv_dropout: float | Sequence[float] = 0.0
    dense_dropout: float | Sequence[float] = 0.0
    activation: str = "relu"
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    bn_axis_name: str | None = None  # pmap axis to average batch statistics over.
    dtype: Any = jnp.float32  # Compute dtype; parameters and BN statistics stay float32.

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        n_conv = len(self.conv_features)
        kernels = _per_layer(self.kernel_size, n_conv, "kernel_size")
        paddings = _per_layer(self.padding, n_conv, "padding")
        conv_rates = _per_layer(self.conv_dropout, n_conv, "conv_dropout")
        dense_rates = _per_layer(self.dense_dropout, len(self.dense_features), "dense_dropout")
        x = x.astype(self.dtype)
        for feats, k, pad, rate in zip(self.conv_features, kernels, paddings, conv_rates, strict=True):
            x = nn.Conv(
                feats,
                (k, k),
                padding=pad.upper(),
                kernel_init=_kernel_init,
                dtype=self.dtype,
                conv_general_dilated=_conv_general_dilated,
            )(x)
            if self.batch_norm:
                x = nn.BatchNorm(
                    use_running_average=not train,
                    momentum=self.bn_momentum,
                    epsilon=self.bn_epsilon,
                    axis_name=self.bn_axis_name if train else None,
                    dtype=self.dtype,
                )(x)
            x = act(x)
            if self.pool:
                x = max_pool_2x2(x)
            if rate:
                x = nn.Dropout(rate, deterministic=not train)(x)
        x = x.reshape((x.shape[0], -1))
        for width, rate in zip(self.dense_features, dense_rates, strict=True):
            x = act(nn.Dense(width, kernel_init=_kernel_init, dtype=self.dtype)(x))
            if rate:
                x = nn.Dropout(rate, deterministic=not train)(x)
        logits = nn.Dense(self.num_classes, kernel_init=_kernel_init, dtype=self.dtype)(x)
        return logits.astype(jnp.float32)  # The loss and softmax in float32.


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def create_model(
    model_config: ml_collections.ConfigDict,
    num_classes: int = 10,
    axis_name: str | None = None,
    compute_dtype: str = "float32",
) -> nn.Module:
    """Builds the network that `config.model` describes.

    `axis_name`: see CNN.bn_axis_name; `compute_dtype`: activations and matmuls
    ('bfloat16' on GPU/TPU), while parameters stay float32.
    """
    fields = dict(model_config)
    name = fields.pop("name")
    dtype = COMPUTE_DTYPES[compute_dtype]
    if name == "mlp":
        return MLP(num_classes=num_classes, dtype=dtype, **fields)
    if name == "cnn":
        return CNN(num_classes=num_classes, bn_axis_name=axis_name, dtype=dtype, **fields)
    raise ValueError(f"model.name={name!r} is not one of {MODELS}")


# Compiler options for the one-off init program on CPU (see init_variables).
CPU_INIT_COMPILER_OPTIONS: dict[str, str | bool] = {
    "xla_backend_optimization_level": "0",
    "xla_llvm_disable_expensive_passes": True,
}


def init_variables(model: nn.Module, rng: jax.Array, image_shape: Sequence[int] = (28, 28, 1)) -> Any:
    """Initial variables ({'params': ..., maybe 'batch_stats': ...}) for one image shape.

    Run as one compiled program: op by op, every random draw compiles on its own
    (9 s for cnn4 on a 2-core CPU). On CPU it is compiled without LLVM's
    optimizations (1 s instead of 4 s; it runs once) and gives the same bits as
    `model.init` op by op (tests/test_models.py). Under a transformation (`rng` a
    tracer: vmap, eval_shape) it is plain `model.init`.
    """
    x = jnp.zeros((1, *image_shape), jnp.float32)
    if isinstance(rng, jax.core.Tracer):
        return model.init(rng, x, train=False)
    init = jax.jit(functools.partial(model.init, train=False))
    options = CPU_INIT_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
    return init.lower(rng, x).compile(compiler_options=options)(rng, x)


def count_parameters(variables: Any) -> int:
    """Total number of scalars in params and batch_stats (what Keras counts).

    Works on arrays and on `jax.eval_shape` outputs alike.
    """
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(variables))
