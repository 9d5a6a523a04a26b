"""oneDNN's convolutions through XLA's FFI (fmnist_jax/onednn.py, model.conv_op='onednn'/'auto'):
values and gradients against lax.conv_general_dilated's autodiff, batching, and the choice
and errors around it."""

import ctypes

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from fmnist_jax import configuration, models, onednn, ops

needs_onednn = pytest.mark.skipif(
    onednn.unavailable_reason() is not None, reason=f"oneDNN unavailable: {onednn.unavailable_reason()}"
)
NHWC = ("NHWC", "HWIO", "NHWC")


def _lax_conv(padding):
    return lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=NHWC)


def _onednn_conv(padding):
    return lambda x, k: ops.conv2d(x, k, padding, 1, False, "onednn")


def _value_and_vjp(conv, x, k, g):
    y, vjp = jax.vjp(conv, x, k)
    return (y, *vjp(g))


@needs_onednn
@pytest.mark.parametrize(
    "x_shape, k_shape, padding",
    [
        ((4, 9, 7, 3), (3, 3, 3, 5), ((1, 1), (1, 1))),  # SAME, odd sizes.
        ((2, 8, 8, 4), (3, 3, 4, 6), ((0, 0), (0, 0))),  # VALID.
        ((3, 6, 6, 1), (3, 2, 1, 4), ((2, 0), (0, 1))),  # One channel, a 3x2 kernel, uneven padding.
    ],
)
def test_convolution_and_gradients_match_lax(x_shape, k_shape, padding):
    x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
    k = jax.random.normal(jax.random.PRNGKey(1), k_shape)
    y = _lax_conv(padding)(x, k)
    g = jax.random.normal(jax.random.PRNGKey(2), y.shape)
    ours = jax.jit(lambda x, k, g: _value_and_vjp(_onednn_conv(padding), x, k, g))(x, k, g)
    reference = _value_and_vjp(_lax_conv(padding), x, k, g)
    for a, b in zip(ours, reference, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))


@needs_onednn
def test_bfloat16_operands_multiply_exactly_and_sum_in_float32():
    """bfloat16 inputs: the products of bfloat16 values are exact in float32, so the result
    is float32's convolution of the same (rounded) values, rounded to bfloat16 once."""
    padding = ((1, 1), (1, 1))
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 16)).astype(jnp.bfloat16)
    k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 16, 8)).astype(jnp.bfloat16)
    y = jax.jit(_onednn_conv(padding))(x, k)
    assert y.dtype == jnp.bfloat16
    exact = _lax_conv(padding)(x.astype(jnp.float32), k.astype(jnp.float32))
    np.testing.assert_allclose(y.astype(jnp.float32), exact, rtol=2**-8, atol=1e-3)


@needs_onednn
def test_vmap_over_models_matches_each_model_alone():
    """best-of-N vmaps a model's gradient over stacked kernels: per model, the same values."""
    padding = ((1, 1), (1, 1))
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 6, 6, 4))
    ks = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4, 5))

    def grad(x, k):
        return jax.grad(lambda x, k: jnp.sum(jnp.sin(_onednn_conv(padding)(x, k))), argnums=(0, 1))(x, k)

    batched = jax.jit(jax.vmap(grad))(x, ks)
    for i in range(3):
        for a, b in zip(batched, grad(x[i], ks[i]), strict=True):
            np.testing.assert_allclose(a[i], b, rtol=1e-6, atol=1e-6)


def _cnn_loss(conv_op):
    model = models.CNN(conv_features=(4, 8), batch_norm=True, dense_features=(8,), conv_op=conv_op)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 28, 28, 1))
    variables = models.init_variables(model, jax.random.PRNGKey(0))

    def loss(params):
        logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(logits))

    return loss, variables["params"]


@needs_onednn
def test_cnn_on_onednn_trains_like_the_xla_convolutions():
    """A fused-block CNN's training loss and gradients with conv_op='onednn' and 'custom'."""
    results = []
    for op in ("onednn", "custom"):
        loss, params = _cnn_loss(op)
        results.append(jax.jit(jax.value_and_grad(loss))(params))
    (ours_loss, ours), (reference_loss, reference) = results
    np.testing.assert_allclose(ours_loss, reference_loss, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(reference), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("usable", [True, False])
def test_auto_takes_onednn_only_where_usable(monkeypatch, usable):
    if usable and onednn.unavailable_reason() is not None:
        pytest.skip(f"oneDNN unavailable: {onednn.unavailable_reason()}")
    monkeypatch.setattr(onednn, "usable", lambda: usable)
    loss, params = _cnn_loss("auto")
    hlo = jax.jit(jax.grad(loss)).lower(params).as_text()
    for target in onednn.TARGETS.values():
        assert (target in hlo) == usable
    assert ("convolution" in hlo) != usable


def test_unbuildable_library_is_one_line_reason(monkeypatch, tmp_path):
    broken = tmp_path / "broken.cc"
    broken.write_text("#include <no_such_header.h>\n")
    monkeypatch.setattr(onednn, "SOURCE", str(broken))
    with pytest.raises(
        onednn.Unavailable, match=r"^building oneDNN's convolutions failed .*no_such_header"
    ) as e:
        onednn.build(str(tmp_path / "lib.so"))
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == [broken]  # Nothing half-written left behind.


def test_unwritable_cache_is_one_line_reason(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(onednn.Unavailable, match=r"^cannot write oneDNN's convolutions to .*a_file/cache: "):
        onednn.build(str(blocker / "cache" / "lib.so"))


def test_a_failed_load_is_tried_once_per_process(monkeypatch):
    """'auto' asks at every convolution it traces; without the library, one failed build."""
    calls = []

    def failing_load():
        calls.append(1)
        raise onednn.Unavailable("no C++ compiler (g++) to build oneDNN's convolutions")

    monkeypatch.setattr(onednn, "load", failing_load)
    onednn.unavailable_reason.cache_clear()
    try:
        assert not onednn.usable() and not onednn.usable()
        assert onednn.unavailable_reason() == "no C++ compiler (g++) to build oneDNN's convolutions"
        assert len(calls) == 1
    finally:
        onednn.unavailable_reason.cache_clear()


@needs_onednn
def test_build_writes_a_loadable_library_named_by_source_and_jaxlib(monkeypatch, tmp_path):
    monkeypatch.setenv("FMNIST_JAX_ONEDNN_CACHE", str(tmp_path))
    path = onednn.library_path()
    assert path.startswith(str(tmp_path)) and path == onednn.library_path()
    onednn.build(path)
    lib = ctypes.cdll.LoadLibrary(path)
    assert lib.OnednnConv and lib.OnednnKernelGrad
    monkeypatch.setattr(onednn.jaxlib, "__version__", "0.0.0")
    assert onednn.library_path() != path  # A new jaxlib builds its own copy.


def test_explicit_onednn_where_unavailable_is_a_config_error(monkeypatch):
    monkeypatch.setattr(onednn, "unavailable_reason", lambda: "no C++ compiler (g++) to build it")
    config = load_config("cnn4")
    config.model.conv_op = "onednn"
    config.model.kernel_grad_chunks = (1, 1, 1, 1)
    with pytest.raises(configuration.ConfigError) as e:
        configuration.validate_config(config)
    assert str(e.value).startswith(
        "config.model.conv_op='onednn': 'onednn' is not available here: no C++ compiler (g++) to build it"
    )
