import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import convolution_input_dtypes, load_config, operand_dtypes

from fmnist_jax import models, ops

# What Keras's count_params() gives for each seed model as written (BN counts 4 per channel).
KERAS_PARAMS = {
    "mlp_4x2": 3_210,
    "mlp_20x3": 16_750,
    "mlp_20x4": 17_170,
    "mlp_256": 203_530,
    "mlp_128": 101_770,
    "cnn2_2x2": 302_026,
    "cnn2_64": 243_786,
    "cnn2_dropout": 225_034,
    "cnn3_wide": 668_042,
    "cnn3": 242_442,
    "cnn4": 423_946,
}


@pytest.mark.parametrize("name", sorted(KERAS_PARAMS))
def test_parameter_count_equals_keras(name):
    model = models.create_model(load_config(name).model)
    variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0)))
    assert models.count_parameters(variables) == KERAS_PARAMS[name]


def _trainable_and_statistics(model_fields, image_shape):
    model = models.create_model(ml_collections.ConfigDict(model_fields))
    variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0), image_shape))
    return models.count_parameters(variables["params"]), models.count_parameters(variables["batch_stats"])


RESNET18 = {"name": "resnet", "block": "basic", "stem_features": 64, "stage_features": (64, 128, 256, 512),
            "stage_blocks": 2, "head_pool": "avg"}  # fmt: skip
WRN_16_4 = {"name": "resnet", "block": "preact", "stem_features": 16, "stage_features": (64, 128, 256),
            "stage_blocks": 2, "head_pool": "avg"}  # fmt: skip


def test_resnet18_and_wrn_16_4_have_their_published_parameter_counts():
    """On CIFAR's 32x32x3 images, ResNet-18 (CIFAR stem) has 11,173,962 trainable
    parameters and WRN-16-4 2,748,890, as their reference implementations print.
    On Fashion-MNIST's one channel the 3x3 stem loses 9 * 2 * its width."""
    assert _trainable_and_statistics(RESNET18, (32, 32, 3))[0] == 11_173_962
    assert _trainable_and_statistics(WRN_16_4, (32, 32, 3))[0] == 2_748_890
    bn_channels_r18 = 64 + 2 * 2 * (64 + 128 + 256 + 512) + 128 + 256 + 512  # Stem, blocks, shortcuts.
    assert _trainable_and_statistics(RESNET18, (28, 28, 1)) == (11_173_962 - 9 * 2 * 64, 2 * bn_channels_r18)
    # Two per block, the first on the block's input (the previous width), and the final one.
    bn_channels_wrn = (16 + 3 * 64) + (64 + 3 * 128) + (128 + 3 * 256) + 256
    assert _trainable_and_statistics(WRN_16_4, (28, 28, 1)) == (2_748_890 - 9 * 2 * 16, 2 * bn_channels_wrn)


def test_airbench_style_parameter_count_by_hand():
    """Stem 24, stages 64/256/256 of conv -> pool -> BN -> act + one residual pair; BN
    with a frozen scale (bias only), convolutions without bias, Dense head."""
    fields = {"name": "resnet", "block": "pool", "stem_features": 24, "stage_features": (64, 256, 256),
              "stage_blocks": 1, "bn_scale": False}  # fmt: skip
    convs = 9 * (1 * 24 + 24 * 64 + 2 * 64 * 64 + 64 * 256 + 2 * 256 * 256 + 256 * 256 + 2 * 256 * 256)
    bn = 24 + 3 * (64 + 256 + 256)  # One per conv.
    assert _trainable_and_statistics(fields, (28, 28, 1)) == (convs + bn + 256 * 10 + 10, 2 * bn)


@pytest.mark.parametrize("block", ["pool", "basic", "preact"])
def test_resnet_logits_shape_and_training_mode(block):
    fields = {"name": "resnet", "block": block, "stem_features": 8, "stage_features": (8, 16), "dropout": 0.3}
    model = models.create_model(ml_collections.ConfigDict(fields))
    variables = models.init_variables(model, jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 28, 28, 1))
    out = model.apply(variables, x, train=False)
    assert out.shape == (4, 10) and out.dtype == jnp.float32
    trained, updates = model.apply(
        variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)}, mutable=["batch_stats"]
    )
    assert not np.allclose(np.asarray(trained), np.asarray(out))
    moved = jax.tree_util.tree_map(
        lambda a, b: bool(np.any(a != b)), updates["batch_stats"], variables["batch_stats"]
    )
    assert all(jax.tree_util.tree_leaves(moved))  # Every BN's statistics train.


@pytest.mark.parametrize(
    "block,stem,branch_ends",
    [("pool", 0, ("Conv_2", "Conv_5")), ("basic", 8, ("Conv_2", "Conv_4"))],
)
def test_resnet_shortcuts_carry_the_image_past_a_zeroed_branch(block, stem, branch_ends):
    """With the last convolution of every residual branch zeroed, each block is its
    shortcut (BN of 0 is its bias, 0 at init): the logits still depend on the image.
    Without the shortcuts they would be the same for every image."""
    fields = {"name": "resnet", "block": block, "stem_features": stem, "stage_features": (8, 16)}
    model = models.create_model(ml_collections.ConfigDict(fields))
    variables = models.init_variables(model, jax.random.PRNGKey(0))
    params = dict(variables["params"])
    for name in branch_ends:
        params[name] = {"kernel": jnp.zeros_like(params[name]["kernel"])}
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 28, 28, 1))
    logits = np.asarray(model.apply({**variables, "params": params}, x, train=False))
    assert np.max(np.abs(logits - logits[0])) > 1e-3


def test_readme_parameter_table_is_the_pinned_counts():
    """README's table of seed models quotes these counts (and says this file pins them)."""
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")) as f:
        readme = f.read()
    section = readme.split("## The seed models", 1)[1].split("\n## ", 1)[0]
    assert "pinned by `tests/test_models.py`" in section
    table = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            table[cells[0].strip("`")] = int(cells[2].replace(",", ""))
    assert table == KERAS_PARAMS


@pytest.mark.parametrize("name", sorted(KERAS_PARAMS))
def test_logits_shape_and_dtype(name):
    model = models.create_model(load_config(name).model)
    variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0)))
    x = jax.ShapeDtypeStruct((3, 28, 28, 1), jnp.float32)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert out.shape == (3, 10)
    assert out.dtype == jnp.float32


def test_batch_stats_only_with_batch_norm():
    with_bn = jax.eval_shape(
        lambda: models.init_variables(models.create_model(load_config("cnn4").model), jax.random.PRNGKey(0))
    )
    without = jax.eval_shape(
        lambda: models.init_variables(
            models.create_model(load_config("cnn2_64").model), jax.random.PRNGKey(0)
        )
    )
    # 4 BN layers of 32/64/128/256 channels: mean and var each.
    assert models.count_parameters(with_bn["batch_stats"]) == 2 * (32 + 64 + 128 + 256)
    assert "batch_stats" not in without


@pytest.mark.parametrize("size", [28, 13, 7, 3])
def test_max_pool_2x2_equals_flax_max_pool(size):
    x = jax.random.normal(jax.random.PRNGKey(size), (2, size, size, 5))
    expected = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    np.testing.assert_array_equal(ops.max_pool_2x2(x), expected)


@pytest.mark.parametrize(
    "fields, rate_field",
    [
        ({"name": "mlp", "hidden": (32, 16), "dropout": (0.0, 0.5)}, "dropout"),
        (
            {"name": "cnn", "conv_features": (4, 4), "dense_features": (16,), "conv_dropout": 0.5},
            "conv_dropout",
        ),
        (
            {"name": "cnn", "conv_features": (4,), "dense_features": (16,), "dense_dropout": 0.5},
            "dense_dropout",
        ),
    ],
    ids=["mlp", "cnn_conv", "cnn_dense"],
)
def test_dropout_only_in_training(fields, rate_field):
    """Each dropout site: evaluation is exactly the network without dropout; training
    drops units, differently for each dropout key and reproducibly for one."""
    model = models.create_model(ml_collections.ConfigDict(fields))
    plain = models.create_model(ml_collections.ConfigDict({**fields, rate_field: 0.0}))
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 28, 28, 1))
    variables = models.init_variables(model, jax.random.PRNGKey(0))

    @jax.jit
    def outputs(variables, x, key):
        evaluated = model.apply(variables, x, train=False)
        trained = model.apply(variables, x, train=True, rngs={"dropout": key})
        return (
            evaluated,
            trained,
            plain.apply(variables, x, train=False),
            plain.apply(variables, x, train=True),
        )

    evaluated, trained, plain_eval, plain_train = outputs(variables, x, jax.random.PRNGKey(2))
    np.testing.assert_array_equal(evaluated, plain_eval)
    np.testing.assert_array_equal(plain_train, plain_eval)  # Without dropout, training changes nothing.
    assert not np.allclose(trained, evaluated)
    _, again, _, _ = outputs(variables, x, jax.random.PRNGKey(2))
    _, other, _, _ = outputs(variables, x, jax.random.PRNGKey(3))
    np.testing.assert_array_equal(trained, again)
    assert not np.allclose(trained, other)


def test_per_layer_field_length_is_checked():
    model = models.CNN(conv_features=(8, 8), padding=("SAME",))
    with pytest.raises(ValueError, match=r"model\.padding has 1 entries for 2 layers"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))


def test_unknown_model_name():
    cfg = load_config("mlp_256").model
    cfg.name = "transformer"
    with pytest.raises(ValueError, match=r"model\.name='transformer'"):
        models.create_model(cfg)


def test_cnn4_accelerator_keeps_flax_batch_norm():
    """configs/cnn4_accelerator.py's H100 figures were measured with flax's batch norm in
    bfloat16, before bfloat16 models used the fused block: the config keeps that program."""
    config = load_config("cnn4_accelerator")
    model = models.create_model(config.model, compute_dtype=config.compute_dtype)
    assert model.dtype == jnp.bfloat16 and not model.fused_block()


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
    """compute_dtype='bfloat16': convolutions and dense layers multiply bfloat16 values; the
    parameters, batch-norm statistics and logits stay float32, and cnn4's blocks still run
    batch norm, ReLU and pooling as one fused operation (on the float32 convolution output)."""
    config = load_config("cnn4")
    model = models.create_model(config.model, compute_dtype="bfloat16")
    assert model.fused_block()
    variables = models.init_variables(model, jax.random.PRNGKey(0))
    assert {x.dtype for x in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 28, 28, 1))
    train_apply = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
    logits, updates = train_apply(variables, x, rngs={"dropout": jax.random.PRNGKey(2)})
    assert logits.dtype == jnp.float32
    assert {v.dtype for v in jax.tree_util.tree_leaves(updates)} == {jnp.dtype(jnp.float32)}
    reference = jax.jit(functools.partial(models.create_model(config.model).apply, train=False))(variables, x)
    logits = jax.jit(functools.partial(model.apply, train=False))(variables, x)
    # Convolutions and dense layers multiply bfloat16 values (the first convolution, of one
    # channel, as bfloat16 multiply-adds), in training and in evaluation ...
    for train in (True, False):
        jaxpr = jax.make_jaxpr(functools.partial(model.apply, train=train, mutable=["batch_stats"]))(
            variables, x, rngs={"dropout": jax.random.PRNGKey(2)}
        )
        assert convolution_input_dtypes(jaxpr) == [("bfloat16",) * 2] * 3
        assert operand_dtypes(jaxpr, "dot_general") == [("bfloat16",) * 3] * 2
    # ... so the logits are close to float32's but not the same numbers.
    np.testing.assert_allclose(logits, reference, rtol=0.1, atol=0.1)
    assert not np.array_equal(np.asarray(logits), np.asarray(reference))


@pytest.mark.parametrize(
    ("size", "kernel", "padding", "channels"),
    [(28, 3, "SAME", (1, 8)), (13, 2, "VALID", (4, 6)), (7, 3, "VALID", (3, 5)), (6, 2, "SAME", (3, 4))],
)
def test_conv2d_and_its_gradients_equal_lax(size, kernel, padding, channels):
    """ops.conv2d writes its backward convolutions out by hand: values and both
    gradients must equal lax.conv_general_dilated's autodiff, bit for bit."""
    cin, cout = channels
    x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size, cin))
    w = jax.random.normal(jax.random.PRNGKey(1), (kernel, kernel, cin, cout))

    def reference(x, w):
        dn = ("NHWC", "HWIO", "NHWC")
        return jnp.sum(jnp.sin(jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn)))

    def ours(x, w):
        return jnp.sum(jnp.sin(ops.conv_general_dilated(x, w, (1, 1), padding)))

    np.testing.assert_array_equal(ours(x, w), reference(x, w))
    for a, b in zip(jax.grad(ours, (0, 1))(x, w), jax.grad(reference, (0, 1))(x, w), strict=True):
        np.testing.assert_array_equal(a, b)


def _training_loss(variables, x):
    """loss(params, model): sum(sin(logits)) of `model` in training mode on `x` (batch stats
    from the batch), with `variables`' other collections."""

    def loss(params, model):
        logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(logits))

    return loss


def applications(jaxpr, primitive: str) -> int:
    """How many times `primitive` is applied in a (closed) jaxpr, a sub-jaxpr's applications
    counted at each of its calls (printed, newer JAX shows a repeated sub-jaxpr only once)."""
    return len(operand_dtypes(jaxpr, primitive))


@pytest.mark.parametrize(("batch", "chunks", "slices"), [(8, 4, 4), (6, 4, 2), (5, 3, 1), (4, 8, 4)])
def test_kernel_gradient_in_batch_slices_equals_autodiff(batch, chunks, slices):
    """kernel_grad_chunks: the kernel gradient as gcd(batch, chunks) convolutions over batch
    slices, summed: autodiff's gradient to float32 rounding, the input gradient unchanged."""
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, 9, 9, 3))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 5))
    dn = ("NHWC", "HWIO", "NHWC")

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w)))

    def ours(x, w):
        return ops.conv_general_dilated(x, w, (1, 1), "SAME", kernel_grad_chunks=chunks)

    def reference(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)

    dx, dw = jax.grad(loss(ours), (0, 1))(x, w)
    ref_dx, ref_dw = jax.grad(loss(reference), (0, 1))(x, w)
    np.testing.assert_array_equal(dx, ref_dx)
    np.testing.assert_allclose(dw, ref_dw, rtol=1e-5, atol=1e-4)
    jaxpr = jax.make_jaxpr(jax.grad(loss(ours), 1))(x, w)
    assert applications(jaxpr, "conv_general_dilated") == 2 + slices  # Forward, input gradient, slices.


def test_cnn_kernel_grad_chunks_per_block():
    """model.kernel_grad_chunks: one entry per block in order, missing entries 1; the same
    logits and, to rounding, the same gradients as without it."""
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 28, 28, 1))
    plain, sliced = (
        models.CNN(conv_features=(4, 8, 8), batch_norm=True, dense_features=(8,), kernel_grad_chunks=c)
        for c in (1, (2, 4))
    )
    variables = models.init_variables(plain, jax.random.PRNGKey(0))
    loss = _training_loss(variables, x)
    value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    ours, reference = (value_and_grad(variables["params"], m) for m in (sliced, plain))
    np.testing.assert_array_equal(ours[0], reference[0])
    for a, b in zip(jax.tree_util.tree_leaves(ours[1]), jax.tree_util.tree_leaves(reference[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    jaxpr = jax.make_jaxpr(jax.grad(loss), static_argnums=1)(variables["params"], sliced)
    # Forwards (the first, of one channel, as multiply-adds), input gradients, kernel-gradient slices.
    assert applications(jaxpr, "conv_general_dilated") == 2 + 3 + (2 + 4 + 1)
    with pytest.raises(ValueError, match=r"kernel_grad_chunks needs model\.conv_op='custom'"):
        models.CNN(conv_features=(4,), kernel_grad_chunks=2, conv_op="lax").init(jax.random.PRNGKey(0), x)


@pytest.mark.parametrize(
    ("kernel", "padding"), [(3, ((1, 1), (1, 1))), (5, ((0, 0), (2, 1))), (2, ((0, 0), (0, 0)))]
)
def test_taps_conv_equals_lax_for_a_one_channel_input(kernel, padding):
    """taps_conv: a one-channel convolution as multiply-adds, lax's values to float32 rounding
    (values near 1e2 after sums of kh*kw products); in conv2d, the gradients too."""
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 11, 10, 1)) * 10
    w = jax.random.normal(jax.random.PRNGKey(1), (kernel, kernel, 1, 4))
    dn = ("NHWC", "HWIO", "NHWC")
    reference = jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn)
    ours = ops.taps_conv(x, w, padding)
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-4)
    jaxpr = jax.make_jaxpr(ops.taps_conv, static_argnums=2)(x, w, padding)
    assert applications(jaxpr, "conv_general_dilated") == 0

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w) / 10))

    grads = jax.grad(loss(lambda x, w: ops.conv2d(x, w, padding, 1, True)), (0, 1))(x, w)
    expected = jax.grad(
        loss(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn)), (0, 1)
    )(x, w)
    for a, b in zip(grads, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_cnn_taps_conv_only_for_the_one_channel_input():
    """model.taps_conv: the first block (one input channel) as multiply-adds, the others as
    convolutions; logits as with taps_conv=False to rounding."""
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 28, 28, 1))
    taps, convs = (models.CNN(conv_features=(4, 8), dense_features=(8,), taps_conv=t) for t in (True, False))
    variables = models.init_variables(taps, jax.random.PRNGKey(0))
    np.testing.assert_allclose(taps.apply(variables, x), convs.apply(variables, x), rtol=1e-5, atol=1e-6)
    counts = [
        applications(jax.make_jaxpr(m.apply)(variables, x), "conv_general_dilated") for m in (taps, convs)
    ]
    assert counts == [1, 2]


@pytest.mark.parametrize(
    "model",
    [
        models.CNN(conv_features=(8, 16), dense_features=(32,), batch_norm=True),
        models.MLP(hidden=(64, 32)),
    ],
    ids=["cnn_bn", "mlp"],
)
def test_compiled_init_gives_the_bits_of_op_by_op_init(model):
    rng = jax.random.PRNGKey(7)
    compiled = models.init_variables(model, rng)
    eager = model.init(rng, jnp.zeros((1, 28, 28, 1), jnp.float32), train=False)
    assert jax.tree_util.tree_structure(compiled) == jax.tree_util.tree_structure(eager)
    for a, b in zip(jax.tree_util.tree_leaves(compiled), jax.tree_util.tree_leaves(eager), strict=True):
        np.testing.assert_array_equal(a, b)


def test_vmapped_conv_with_per_model_kernels_equals_each_model_alone():
    """The best-of-N vmap rule: one convolution per model, same bits as each alone,
    gradients too; with only the images batched, the same values (folded batch)."""
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, (3, 4, 9, 9, 2))
    w = jax.random.normal(kw, (3, 3, 3, 2, 5))
    pad = ((1, 1), (1, 1))

    def loss(w, x):
        return jnp.sum(ops.conv2d(x, w, pad) ** 2)

    out = jax.vmap(lambda a, b: ops.conv2d(a, b, pad))(x, w)
    grads = jax.vmap(jax.grad(loss, argnums=(0, 1)))(w, x)
    for i in range(3):
        np.testing.assert_array_equal(out[i], ops.conv2d(x[i], w[i], pad))
        alone = jax.grad(loss, argnums=(0, 1))(w[i], x[i])
        np.testing.assert_array_equal(grads[0][i], alone[0])
        np.testing.assert_array_equal(grads[1][i], alone[1])
    images_only = jax.vmap(lambda a: ops.conv2d(a, w[0], pad))(x)
    expected = jax.lax.conv_general_dilated(
        x.reshape(12, 9, 9, 2), w[0], (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_allclose(images_only, expected.reshape(3, 4, 9, 9, 5), rtol=1e-5, atol=1e-5)


def _flax_bn_relu_pool(x, shift, scale, bias, axis_name=None):
    """The reference: x + shift, flax's BatchNorm (training mode), ReLU, then 2x2 pooling, and the stats."""
    bn = nn.BatchNorm(use_running_average=False, momentum=0.0, epsilon=1e-3, axis_name=axis_name)
    stats = {"mean": jnp.zeros_like(scale), "var": jnp.ones_like(scale)}
    y, updated = bn.apply(
        {"params": {"scale": scale, "bias": bias}, "batch_stats": stats}, x + shift, mutable=["batch_stats"]
    )
    return ops.max_pool_2x2(nn.relu(y)), updated["batch_stats"]["mean"], updated["batch_stats"]["var"]


def _fused(x, shift, scale, bias, axis_name=None):
    return ops.bn_relu_pool(x, shift, scale, bias, 1e-3, axis_name)


def _block_inputs(size):
    """Activations with tied windows (a flat patch, as conv outputs on the background are),
    channels whose scale is negative or zero, and biases that make some outputs 0."""
    x = jax.random.normal(jax.random.PRNGKey(size), (3, size, size, 5))
    x = x.at[:, :4, :4, :3].set(0.25)
    scale = jnp.array([1.0, -0.7, 0.0, 2.0, -1.5])
    bias = jnp.array([0.1, 0.2, -0.3, 0.0, 0.5])
    cotangent = jax.random.normal(jax.random.PRNGKey(99), (3, size // 2, size // 2, 5))
    return x, scale, bias, cotangent


def _grads(f, x, shift, scale, bias, cotangent, mean_weights):
    """Gradients of sum(out * cotangent) + sum(mean * mean_weights) by all four inputs."""

    def loss(*args):
        out, mean, _ = f(*args)
        return jnp.sum(out * cotangent) + jnp.sum(mean * mean_weights)

    return jax.jit(jax.grad(loss, (0, 1, 2, 3)))(x, shift, scale, bias)


@pytest.mark.parametrize("size", [8, 7])
def test_fused_bn_relu_pool_equals_flax_batch_norm_relu_and_pool(size):
    """With no shift: the same outputs and batch statistics as flax's three steps, to a
    few units in the last place (bit for bit on the AMD machines; XLA's code for an
    Emerald Rapids Xeon sums the variance in another order: 3 ulp); the written-out
    gradients of the input, scale and bias equal autodiff's up to float32 rounding."""
    x, scale, bias, cotangent = _block_inputs(size)
    shift = jnp.zeros_like(scale)
    for ours, reference in zip(
        jax.jit(_fused)(x, shift, scale, bias),
        jax.jit(_flax_bn_relu_pool)(x, shift, scale, bias),
        strict=True,
    ):
        np.testing.assert_array_max_ulp(ours, reference, maxulp=4)
    ours = _grads(_fused, x, shift, scale, bias, cotangent, 0.0)
    reference = _grads(_flax_bn_relu_pool, x, shift, scale, bias, cotangent, 0.0)
    for a, b in zip(ours[:1] + ours[2:], reference[:1] + reference[2:], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        assert np.abs(b).max() > 0.1


def test_fused_bn_relu_pool_shift_moves_only_the_mean():
    """A shift (the conv bias) gives flax's values on x + shift up to rounding, and its
    gradient is exactly the mean's cotangent: 0 when only the output is used."""
    x, scale, bias, cotangent = _block_inputs(8)
    shift = jnp.array([3.0, -2.0, 0.5, 1.0, -0.25])
    for ours, reference in zip(
        _fused(x, shift, scale, bias), _flax_bn_relu_pool(x, shift, scale, bias), strict=True
    ):
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)
    mean_weights = jnp.array([0.5, -1.0, 2.0, 0.0, 1.5])
    ours = _grads(_fused, x, shift, scale, bias, cotangent, mean_weights)
    reference = _grads(_flax_bn_relu_pool, x, shift, scale, bias, cotangent, mean_weights)
    for a, b in zip(ours, reference, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(ours[1], mean_weights)
    np.testing.assert_array_equal(_grads(_fused, x, shift, scale, bias, cotangent, 0.0)[1], 0.0)


def test_fused_bn_relu_pool_averages_statistics_over_the_named_axis():
    """Under a named axis (pmap's in training; vmap's here) the statistics and their gradient
    terms are the whole batch's, as flax BatchNorm's with axis_name: each shard's gradient of
    its own loss, as a training step takes it, equals autodiff's through flax's."""
    x, scale, bias, cotangent = _block_inputs(8)
    shards, g = x.reshape(3, 1, 8, 8, 5), cotangent.reshape(3, 1, 4, 4, 5)
    shift = jnp.zeros_like(scale)

    def per_shard(f, axis_name):
        def loss(xi, gi):
            return jnp.sum(f(xi, shift, scale, bias, axis_name)[0] * gi)

        return jax.jit(jax.vmap(jax.value_and_grad(loss), axis_name="i"))(shards, g)

    (value, grad), (expected_value, expected_grad) = (
        per_shard(_fused, "i"),
        per_shard(_flax_bn_relu_pool, "i"),
    )
    np.testing.assert_allclose(value, expected_value, rtol=1e-6)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-5)
    _, alone = per_shard(_fused, None)
    assert np.abs(alone - expected_grad).max() > 1e-2  # The axis matters here.


def test_max_pool_vjp_splits_ties_as_autodiff_does():
    """Integer-valued inputs: most windows have ties, where autodiff's gradient of two
    maxima splits in halves; the one-pass gradient must give exactly the same."""
    x = jax.random.randint(jax.random.PRNGKey(0), (2, 7, 9, 3), 0, 3).astype(jnp.float32)
    g = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 4, 3))
    _, vjp = jax.vjp(ops.max_pool_2x2, x)
    np.testing.assert_array_equal(ops.max_pool_2x2_vjp(x, g), vjp(g)[0])


def test_cnn_fused_and_flax_blocks_train_alike():
    """model.bn_op: the same variables and evaluation bits either way; in training the same
    logits, batch statistics and gradients up to rounding, except the conv biases' gradients:
    exactly 0 in the fused block (its `shift`), rounding noise through flax's batch norm."""
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 28, 28, 1))
    fused, flax_bn = (
        models.CNN(conv_features=(8, 16, 16), batch_norm=True, dense_features=(16,), bn_op=op)
        for op in ("fused", "flax")
    )
    assert fused.fused_block() and not flax_bn.fused_block()
    variables = models.init_variables(fused, jax.random.PRNGKey(0))
    reference_variables = models.init_variables(flax_bn, jax.random.PRNGKey(0))
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(reference_variables)
    leaves = zip(
        jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(reference_variables), strict=True
    )
    for a, b in leaves:
        np.testing.assert_array_equal(a, b)  # The same initialisation.
    # Conv biases of a trained model: not 0, so that dropping one anywhere shows.
    params = {name: dict(layer) for name, layer in variables["params"].items()}
    for index, name in enumerate(n for n in params if n.startswith("Conv_")):
        params[name]["bias"] = jnp.linspace(-1.0, 1.0, params[name]["bias"].shape[0]) * (index + 1)
    variables = {**variables, "params": params}
    np.testing.assert_array_equal(jax.jit(fused.apply)(variables, x), jax.jit(flax_bn.apply)(variables, x))

    def loss(params, model):
        logits, updates = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.sum(jnp.sin(logits)), (logits, updates)

    value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (_, ours), grads = value_and_grad(variables["params"], fused)
    (_, reference), reference_grads = value_and_grad(variables["params"], flax_bn)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(reference), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(
        jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(reference_grads), strict=True
    ):
        # Leaves of order 1, each a float32 sum over up to 6 x 28 x 28 positions; jax 0.11's
        # CPU kernels round a kernel-gradient entry of 0.0089 1.2e-5 away.
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    for name in (n for n in grads if n.startswith("Conv_")):  # Exactly 0, not rounding noise.
        np.testing.assert_array_equal(grads[name]["bias"], 0.0)


def test_cnn_conv_op_lax_gives_the_custom_convolutions_values():
    """model.conv_op='lax' (the benchmark's autodiff_conv ablation) runs in a fused block too,
    with the written-out convolutions' logits and gradients (to rounding: the first, of one
    channel, runs as multiply-adds there)."""
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 28, 28, 1))
    custom, lax_conv = (
        models.CNN(conv_features=(4, 8), batch_norm=True, dense_features=(8,), conv_op=op)
        for op in ("custom", "lax")
    )
    assert custom.fused_block() and lax_conv.fused_block()
    variables = models.init_variables(custom, jax.random.PRNGKey(0))
    loss = _training_loss(variables, x)
    value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    ours, reference = (value_and_grad(variables["params"], m) for m in (custom, lax_conv))
    np.testing.assert_allclose(ours[0], reference[0], rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(ours[1]), jax.tree_util.tree_leaves(reference[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
