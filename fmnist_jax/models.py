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

from fmnist_jax import onednn, ops

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "elu": nn.elu,
    "swish": nn.swish,
}
PADDINGS = ("SAME", "VALID")

_kernel_init = nn.initializers.glorot_uniform()


def per_layer(value: Any, count: int, name: str) -> tuple[Any, ...]:
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
        rates = per_layer(self.dropout, len(self.hidden), "dropout")
        x = x.reshape((x.shape[0], -1)).astype(self.dtype)
        for width, rate in zip(self.hidden, rates, strict=True):
            x = act(nn.Dense(width, kernel_init=_kernel_init, dtype=self.dtype)(x))
            if rate:
                x = nn.Dropout(rate, deterministic=not train)(x)
        logits = nn.Dense(self.num_classes, kernel_init=_kernel_init, dtype=self.dtype)(x)
        return logits.astype(jnp.float32)


class BatchNormReluPool(nn.Module):
    """nn.BatchNorm, ReLU, then `ops.max_pool_2x2`: the same variables and values, and in
    training one fused operation (`ops.bn_relu_pool`) with its gradient written out.
    Computes in float32 whatever the model's compute dtype (`Conv` hands it float32)."""

    momentum: float = 0.99
    epsilon: float = 1e-3
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, shift: jax.Array, train: bool) -> jax.Array:
        """The block on `x + shift` (`shift`: the convolution's bias, see `ops.bn_relu_pool`)."""
        shape = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), shape)
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), shape)
        scale = self.param("scale", nn.initializers.ones, shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, shape, jnp.float32)
        if not train:
            y = (x + shift - ra_mean.value) * (jax.lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
            return ops.max_pool_2x2(nn.relu(y))
        out, mean, var = ops.bn_relu_pool(x, shift, scale, bias, self.epsilon, self.axis_name)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return out


class Conv(nn.Module):
    """nn.Conv's variables (`kernel`, `bias`, same initialisation) and convolution, with the
    bias returned beside the output instead of added to it (for `BatchNormReluPool`), and
    the output in float32 whatever `dtype` the convolution computes in."""

    features: int
    kernel_size: int
    padding: str
    conv: Callable[..., jax.Array]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", _kernel_init, shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        y = self.conv(x, kernel, (1, 1), self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y.astype(jnp.float32), bias


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
    pool_op: str = "maxima"  # ops.POOL_OPS: how 2x2 max pooling is computed (same values).
    # ops.CONV_OPS: how convolutions and their gradients are computed ("auto": on oneDNN
    # where fmnist_jax.onednn builds and loads on a CPU, else "custom").
    conv_op: str = "custom"
    bn_op: str = "fused"  # BN_OPS: "fused" runs BN + ReLU + pooling as BatchNormReluPool where it can.
    # Speed only: slices of the batch each block's kernel gradient is computed over
    # (ops.kernel_gradient); one value, or one per block in order (blocks past its end: 1).
    kernel_grad_chunks: int | Sequence[int] = 1
    # Speed only: a one-channel input's convolution (the first block's) as multiply-adds
    # (ops.taps_conv), with conv_op="custom".
    taps_conv: bool = True

    def fused_block(self) -> bool:
        """Whether each block's BN, activation and pooling run as one `BatchNormReluPool`."""
        return (
            self.bn_op == "fused" and self.batch_norm and self.pool and self.activation == "relu"
            and self.pool_op == "maxima"
        )  # fmt: skip

    def block_conv(self, index: int) -> Callable[..., jax.Array]:
        """Block `index`'s convolution hook, with its `kernel_grad_chunks` and `taps_conv`."""
        per_block = self.kernel_grad_chunks
        if isinstance(per_block, int):
            chunks = per_block
        else:
            chunks = per_block[index] if index < len(per_block) else 1
        conv = ops.CONV_OPS[self.conv_op]
        if self.conv_op in ("custom", "auto", "onednn"):
            return functools.partial(conv, kernel_grad_chunks=chunks, taps=self.taps_conv)
        if chunks != 1:
            raise ValueError(f"model.kernel_grad_chunks needs model.conv_op='custom', not {self.conv_op!r}")
        return conv

    def conv_block(
        self, x: jax.Array, index: int, features: int, kernel: int, padding: str, train: bool
    ) -> jax.Array:
        """Conv [+BN] + activation [+pool]; as `Conv` + `BatchNormReluPool` for a fused block."""
        conv_op = self.block_conv(index)
        if self.fused_block():
            y, shift = Conv(features, kernel, padding.upper(), conv_op, self.dtype, name=f"Conv_{index}")(x)
            block = BatchNormReluPool(
                self.bn_momentum,
                self.bn_epsilon,
                self.bn_axis_name if train else None,
                name=f"BatchNorm_{index}",
            )
            return block(y, shift, train)
        x = nn.Conv(
            features,
            (kernel, kernel),
            padding=padding.upper(),
            kernel_init=_kernel_init,
            dtype=self.dtype,
            conv_general_dilated=conv_op,
            name=f"Conv_{index}",
        )(x)
        if self.batch_norm:
            x = nn.BatchNorm(
                use_running_average=not train,
                momentum=self.bn_momentum,
                epsilon=self.bn_epsilon,
                axis_name=self.bn_axis_name if train else None,
                dtype=self.dtype,
            )(x)
        x = ACTIVATIONS[self.activation](x)
        return ops.POOL_OPS[self.pool_op](x) if self.pool else x

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        n_conv = len(self.conv_features)
        kernels = per_layer(self.kernel_size, n_conv, "kernel_size")
        paddings = per_layer(self.padding, n_conv, "padding")
        conv_rates = per_layer(self.conv_dropout, n_conv, "conv_dropout")
        dense_rates = per_layer(self.dense_dropout, len(self.dense_features), "dense_dropout")
        x = x.astype(self.dtype)
        blocks = zip(self.conv_features, kernels, paddings, conv_rates, strict=True)
        for index, (feats, k, pad, rate) in enumerate(blocks):
            x = self.conv_block(x, index, feats, k, pad, train)
            if rate:
                x = nn.Dropout(rate, deterministic=not train)(x)
        x = x.reshape((x.shape[0], -1))
        for width, rate in zip(self.dense_features, dense_rates, strict=True):
            x = act(nn.Dense(width, kernel_init=_kernel_init, dtype=self.dtype)(x))
            if rate:
                x = nn.Dropout(rate, deterministic=not train)(x)
        logits = nn.Dense(self.num_classes, kernel_init=_kernel_init, dtype=self.dtype)(x)
        return logits.astype(jnp.float32)  # The loss and softmax in float32.


class ResNet(nn.Module):
    """Residual networks from fields: a stem, stages of residual blocks, global pooling, Dense.

    `block` says what a stage is:
      - "pool" (airbench-style, all convolutions stride 1): conv -> 2x2 max pool -> BN ->
        activation, then `stage_blocks` residual pairs x + act(BN(conv(act(BN(conv(x)))))).
      - "basic" (ResNet v1, e.g. ResNet-18): blocks act(BN(conv(act(BN(conv(x))))) + shortcut),
        the first block of every stage after the first with stride 2; the shortcut is a
        strided 1x1 conv + BN where the shape changes.
      - "preact" (Wide-ResNet): blocks conv(act(BN(conv(act(BN(x)))))) + shortcut, with
        `dropout` between the two convolutions, and a final BN + activation.
    `stem_features`: a first conv (+BN + activation, except for "preact") of this width
    (0: none). Convolutions have no bias (BN follows). `bn_scale=False` freezes BN's
    scale at 1. `head_scale` multiplies the logits.
    """

    stage_features: Sequence[int]
    stage_blocks: int | Sequence[int] = 1
    block: str = "pool"
    stem_features: int = 0
    kernel_size: int = 3
    head_pool: str = "max"
    head_scale: float = 1.0
    dropout: float = 0.0
    num_classes: int = 10
    activation: str = "relu"
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    bn_scale: bool = True
    bn_axis_name: str | None = None  # pmap axis to average batch statistics over.
    dtype: Any = jnp.float32  # Compute dtype; parameters and BN statistics stay float32.
    pool_op: str = "maxima"  # ops.POOL_OPS
    conv_op: str = "custom"  # ops.CONV_OPS

    def conv(self, features: int, x: jax.Array, kernel: int | None = None, stride: int = 1) -> jax.Array:
        k = kernel or self.kernel_size
        return nn.Conv(
            features, (k, k), strides=stride, padding="SAME", use_bias=False, kernel_init=_kernel_init,
            dtype=self.dtype, conv_general_dilated=ops.CONV_OPS[self.conv_op],
        )(x)  # fmt: skip

    def bn(self, x: jax.Array, train: bool) -> jax.Array:
        return nn.BatchNorm(
            use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
            use_scale=self.bn_scale, axis_name=self.bn_axis_name if train else None, dtype=self.dtype,
        )(x)  # fmt: skip

    def act(self, x: jax.Array) -> jax.Array:
        return ACTIVATIONS[self.activation](x)

    def pool_stage(self, x: jax.Array, features: int, blocks: int, train: bool) -> jax.Array:
        x = self.act(self.bn(ops.POOL_OPS[self.pool_op](self.conv(features, x)), train))
        for _ in range(blocks):
            y = self.act(self.bn(self.conv(features, x), train))
            x = x + self.act(self.bn(self.conv(features, y), train))
        return x

    def basic_block(self, x: jax.Array, features: int, stride: int, train: bool) -> jax.Array:
        y = self.act(self.bn(self.conv(features, x, stride=stride), train))
        y = self.bn(self.conv(features, y), train)
        if stride != 1 or x.shape[-1] != features:
            x = self.bn(self.conv(features, x, kernel=1, stride=stride), train)
        return self.act(y + x)

    def preact_block(self, x: jax.Array, features: int, stride: int, train: bool) -> jax.Array:
        o = self.act(self.bn(x, train))
        y = self.act(self.bn(self.conv(features, o, stride=stride), train))
        if self.dropout:
            y = nn.Dropout(self.dropout, deterministic=not train)(y)
        y = self.conv(features, y)
        if stride != 1 or x.shape[-1] != features:
            x = self.conv(features, o, kernel=1, stride=stride)
        return y + x

    def stages(self, x: jax.Array, train: bool) -> jax.Array:
        blocks = per_layer(self.stage_blocks, len(self.stage_features), "stage_blocks")
        for i, (features, n) in enumerate(zip(self.stage_features, blocks, strict=True)):
            if self.block == "pool":
                x = self.pool_stage(x, features, n, train)
                continue
            block = self.basic_block if self.block == "basic" else self.preact_block
            for j in range(n):
                x = block(x, features, 2 if i > 0 and j == 0 else 1, train)
        return x

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x.astype(self.dtype)
        if self.stem_features:
            x = self.conv(self.stem_features, x)
            if self.block != "preact":
                x = self.act(self.bn(x, train))
        x = self.stages(x, train)
        if self.block == "preact":
            x = self.act(self.bn(x, train))
        x = x.max(axis=(1, 2)) if self.head_pool == "max" else x.mean(axis=(1, 2))
        logits = nn.Dense(self.num_classes, kernel_init=_kernel_init, dtype=self.dtype)(x)
        return logits.astype(jnp.float32) * self.head_scale


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


# Each family: its module and the checks of its config fields. A new family is a new
# entry here (and a config); nothing else in the package knows the architectures.
MODEL_CLASSES: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN, "resnet": ResNet}
RESNET_BLOCKS = ("pool", "basic", "preact")
# The fields a family cannot do without (the rest have defaults).
REQUIRED_FIELDS = {"mlp": ("hidden",), "cnn": ("conv_features",), "resnet": ("stage_features",)}
HEAD_POOLS = ("max", "avg")
# model.bn_op: "fused" (a block's BN, ReLU and pooling as one BatchNormReluPool, where the
# block has all three in float32) or "flax" (nn.BatchNorm, then the activation, then pooling).
BN_OPS = ("fused", "flax")
MODELS = tuple(MODEL_CLASSES)
Need = Callable[[bool, str, str], None]  # need(ok, field, why): reports a field that is not ok.


def _values(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _check_rates(m: ml_collections.ConfigDict, need: Need, fields: Sequence[str]) -> None:
    for f in fields:
        if f in m:
            need(all(0.0 <= float(r) < 1.0 for r in _values(m[f])), f"model.{f}", "rates must be in [0, 1)")


def _check_mlp(m: ml_collections.ConfigDict, need: Need) -> None:
    need(all(int(w) >= 1 for w in m.hidden), "model.hidden", "widths must be >= 1")
    _check_rates(m, need, ["dropout"])


def _check_cnn(m: ml_collections.ConfigDict, need: Need) -> None:
    need(len(m.conv_features) >= 1, "model.conv_features", "needs at least one conv block")
    need(all(int(f) >= 1 for f in m.conv_features), "model.conv_features", "must be >= 1")
    need(all(int(k) >= 1 for k in _values(m.get("kernel_size", 3))), "model.kernel_size", "must be >= 1")
    need(
        all(str(p).upper() in PADDINGS for p in _values(m.get("padding", "SAME"))),
        "model.padding",
        f"expected one of {PADDINGS}",
    )
    _check_rates(m, need, ["conv_dropout", "dense_dropout"])
    _check_ops(m, need)
    _check_kernel_grad_chunks(m, need)


def _check_kernel_grad_chunks(m: ml_collections.ConfigDict, need: Need) -> None:
    chunks = [int(c) for c in _values(m.get("kernel_grad_chunks", 1))]
    field = "model.kernel_grad_chunks"
    need(all(c >= 1 for c in chunks), field, "must be >= 1")
    need(
        max(chunks) == 1 or m.get("conv_op", "custom") in ("custom", "auto"),
        field,
        "needs model.conv_op='custom' or 'auto' (oneDNN's kernel gradient is not sliced)",
    )


def _check_ops(m: ml_collections.ConfigDict, need: Need) -> None:
    """The fields that choose how an operation is computed (same values either way)."""
    for field, choices in (
        ("bn_op", BN_OPS),
        ("pool_op", tuple(ops.POOL_OPS)),
        ("conv_op", tuple(ops.CONV_OPS)),
    ):
        if field in m:
            need(m[field] in choices, f"model.{field}", f"expected one of {choices}")
    if m.get("conv_op") == "onednn":
        reason = onednn.unavailable_reason()
        need(reason is None, "model.conv_op", f"'onednn' is not available here: {reason} (use 'auto')")


def _check_resnet(m: ml_collections.ConfigDict, need: Need) -> None:
    need(len(m.stage_features) >= 1, "model.stage_features", "needs at least one stage")
    need(all(int(f) >= 1 for f in m.stage_features), "model.stage_features", "must be >= 1")
    blocks = _values(m.get("stage_blocks", 1))
    need(len(blocks) in (1, len(m.stage_features)), "model.stage_blocks", "one value, or one per stage")
    need(all(int(b) >= 0 for b in blocks), "model.stage_blocks", "must be >= 0")
    need(m.get("block", "pool") in RESNET_BLOCKS, "model.block", f"expected one of {RESNET_BLOCKS}")
    need(m.get("head_pool", "max") in HEAD_POOLS, "model.head_pool", f"expected one of {HEAD_POOLS}")
    need(int(m.get("stem_features", 0)) >= 0, "model.stem_features", "must be >= 0 (0: no stem)")
    need(int(m.get("kernel_size", 3)) >= 1, "model.kernel_size", "must be >= 1")
    _check_rates(m, need, ["dropout"])
    _check_ops(m, need)


FIELD_CHECKS: dict[str, Callable[[ml_collections.ConfigDict, Need], None]] = {
    "mlp": _check_mlp,
    "cnn": _check_cnn,
    "resnet": _check_resnet,
}


def check_model_config(m: ml_collections.ConfigDict, need: Need) -> None:
    """Checks config.model: its family, activation, and the family's own fields."""
    need(m.name in MODELS, "model.name", f"unknown model, expected one of {MODELS}")
    need(
        m.get("activation", "relu") in ACTIVATIONS,
        "model.activation",
        f"unknown activation, expected one of {tuple(ACTIVATIONS)}",
    )
    for field in REQUIRED_FIELDS[m.name]:
        need(field in m, "model.name", f"needs model.{field} (the family's required field)")
    FIELD_CHECKS[m.name](m, need)


def create_model(
    model_config: ml_collections.ConfigDict,
    num_classes: int = 10,
    axis_name: str | None = None,
    compute_dtype: str = "float32",
) -> nn.Module:
    """Builds the network that `config.model` describes.

    `axis_name`: the pmap axis batch norm averages over (for families that have it);
    `compute_dtype`: activations and matmuls ('bfloat16' on GPU/TPU), while parameters
    stay float32.
    """
    fields = dict(model_config)
    name = fields.pop("name")
    if name not in MODEL_CLASSES:
        raise ValueError(f"model.name={name!r} is not one of {MODELS}")
    module = MODEL_CLASSES[name]
    if "bn_axis_name" in module.__dataclass_fields__:
        fields["bn_axis_name"] = axis_name
    return module(num_classes=num_classes, dtype=COMPUTE_DTYPES[compute_dtype], **fields)


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
