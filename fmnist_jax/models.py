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

from fmnist_jax import ops

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
    conv_op: str = "custom"  # ops.CONV_OPS: how convolutions and their gradients are computed.

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        n_conv = len(self.conv_features)
        kernels = per_layer(self.kernel_size, n_conv, "kernel_size")
        paddings = per_layer(self.padding, n_conv, "padding")
        conv_rates = per_layer(self.conv_dropout, n_conv, "conv_dropout")
        dense_rates = per_layer(self.dense_dropout, len(self.dense_features), "dense_dropout")
        x = x.astype(self.dtype)
        for feats, k, pad, rate in zip(self.conv_features, kernels, paddings, conv_rates, strict=True):
            x = nn.Conv(
                feats,
                (k, k),
                padding=pad.upper(),
                kernel_init=_kernel_init,
                dtype=self.dtype,
                conv_general_dilated=ops.CONV_OPS[self.conv_op],
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
                x = ops.POOL_OPS[self.pool_op](x)
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


# Each family: its module and the checks of its config fields. A new family is a new
# entry here (and a config); nothing else in the package knows the architectures.
MODEL_CLASSES: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN}
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


FIELD_CHECKS: dict[str, Callable[[ml_collections.ConfigDict, Need], None]] = {
    "mlp": _check_mlp,
    "cnn": _check_cnn,
}


def check_model_config(m: ml_collections.ConfigDict, need: Need) -> None:
    """Checks config.model: its family, activation, and the family's own fields."""
    need(m.name in MODELS, "model.name", f"unknown model, expected one of {MODELS}")
    need(
        m.get("activation", "relu") in ACTIVATIONS,
        "model.activation",
        f"unknown activation, expected one of {tuple(ACTIVATIONS)}",
    )
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
