"""The benchmark compares like with like: its Keras and PyTorch models are ours, built
from the same config fields, parameter for parameter."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import load_config
from test_models import KERAS_PARAMS

from fmnist_jax import benchmark, models, parallel, steps

# Every seed model: the README's parameter table claims each equals its Keras model's
# (and test_models.py pins the counts).
CONFIGS = list(KERAS_PARAMS)


def our_parameter_count(config):
    ours = models.create_model(config.model)
    shapes = jax.eval_shape(lambda: models.init_variables(ours, jax.random.PRNGKey(0)))
    return models.count_parameters(shapes)


@pytest.mark.parametrize("name", CONFIGS)
def test_keras_model_has_our_parameter_count(name):
    config = load_config(name)
    ours = models.create_model(config.model)
    shapes = jax.eval_shape(lambda: models.init_variables(ours, jax.random.PRNGKey(0)))
    assert benchmark.keras_model(config).count_params() == models.count_parameters(shapes)


@pytest.mark.parametrize("name", CONFIGS)
def test_torch_model_has_our_parameter_count(name):
    """Parameters plus BN running mean and variance, as ours counts params + batch_stats."""
    torch = pytest.importorskip("torch")
    config = load_config(name)
    model = benchmark.torch_model(config).eval()
    assert benchmark.torch_count_parameters(model) == our_parameter_count(config) == KERAS_PARAMS[name]
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def cnn_config(**fields):
    config = load_config("cnn4")
    config.model = ml_collections.ConfigDict({"name": "cnn", **fields})
    return config


def odd_config():
    """A CNN that sets every field the builders read, unlike any seed config."""
    return cnn_config(
        conv_features=(4, 6),
        kernel_size=(5, 3),
        padding=("VALID", "SAME"),
        activation="tanh",
        conv_dropout=(0.1, 0.2),
        dense_features=(12, 8),
        dense_dropout=(0.3, 0.0),
        batch_norm=True,
        bn_momentum=0.9,
        bn_epsilon=1e-4,
    )


def test_torch_model_follows_the_config_fields():
    torch = pytest.importorskip("torch")
    config = odd_config()
    model = benchmark.torch_model(config).eval()
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert benchmark.torch_count_parameters(model) == our_parameter_count(config)
    layers = list(model.modules())[1:]
    names = {type(m).__name__ for m in layers}
    assert "Tanh" in names and "ReLU" not in names
    assert sum(isinstance(m, torch.nn.Tanh) for m in layers) == 4  # 2 conv blocks, 2 dense layers.
    assert [m.p for m in layers if isinstance(m, torch.nn.Dropout)] == [0.1, 0.2, 0.3]
    assert [m.kernel_size for m in layers if isinstance(m, torch.nn.Conv2d)] == [(5, 5), (3, 3)]
    bns = [m for m in layers if isinstance(m, torch.nn.BatchNorm2d)]
    assert [(m.eps, m.momentum) for m in bns] == [(1e-4, pytest.approx(0.1))] * 2


def test_keras_model_follows_the_config_fields():
    config = odd_config()
    model = benchmark.keras_model(config)
    assert model.count_params() == our_parameter_count(config)
    assert model.output_shape == (None, 10)
    dropouts = [layer.rate for layer in model.layers if type(layer).__name__ == "Dropout"]
    assert dropouts == [0.1, 0.2, 0.3]
    bns = [layer for layer in model.layers if type(layer).__name__ == "BatchNormalization"]
    assert [(b.momentum, b.epsilon) for b in bns] == [(0.9, 1e-4)] * 2


@pytest.mark.parametrize("kernel_size", [2, 3, 4])
def test_torch_same_padding_is_ours(kernel_size):
    """'SAME' pads (k-1)//2 before and k//2 after, as JAX and TF: an even kernel's
    convolution gives our values, not only our shape."""
    torch = pytest.importorskip("torch")
    model = benchmark.torch_model(cnn_config(conv_features=(3,), kernel_size=kernel_size)).eval()
    convs = [i for i, m in enumerate(model) if isinstance(m, torch.nn.Conv2d)]
    x = np.random.default_rng(0).normal(size=(2, 9, 9, 1)).astype(np.float32)
    with torch.no_grad():
        theirs = model[: convs[0] + 1](torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    conv = model[convs[0]]
    kernel = conv.weight.detach().numpy().transpose(2, 3, 1, 0)  # OIHW -> HWIO.
    ours = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ours = ours + conv.bias.detach().numpy()
    np.testing.assert_allclose(theirs, np.asarray(ours), rtol=1e-5, atol=1e-5)


def test_synthetic_program_is_the_scanned_step_without_the_gather(splits):
    """The synthetic-input program does the real program's work: fed one batch,
    it ends in the state the real program reaches when every step gathers that batch."""
    config = load_config("cnn4")  # Batch norm, dropout.
    config.model.conv_features = (4, 8)
    config.model.dense_features = (16,)
    config.batch_size = 8
    par = parallel.DataParallel("jit")
    rng = jax.random.PRNGKey(3)
    images, labels = splits["train"].images[:64], splits["train"].labels[:64].astype(np.int32)
    step = steps.configured_train_step(config, par.axis_name)
    rows = np.arange(5, 13, dtype=np.int32)
    states = []
    for synthetic in (False, True):
        _, state = steps.create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch=10)
        if synthetic:
            fixed = par.put_batch((images[rows], labels[rows]))
            program = benchmark.compile_synthetic_chunk(par, step, state, fixed, 3, rng)
            state, metrics = program(state, fixed, rng)
        else:
            data = par.put_dataset((images, labels))
            program = par.compile_train_chunk(step, state, data, 3, config.batch_size, rng)
            state, metrics = program(state, data, jnp.asarray(np.tile(rows, (3, 1))), rng)
        assert metrics["loss"].shape == (3,) and int(state.step) == 3
        states.append(jax.tree_util.tree_leaves((state.params, state.batch_stats, state.opt_state, metrics)))
    for a, b in zip(*states, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_markdown_reports_ratios():
    report = {
        "date": "d",
        "machine": "m",
        "repeats": 3,
        "configs": {
            "cnn4": {
                "jax": {"train_images_per_second": 1500.0, "over_keras": 0.75, "real_over_synthetic": 0.99},
                "keras": {
                    "train_images_per_second": 2000.0,
                    "setups": {"fit defaults": 700.0, "jit_compile": 2000.0},
                    "fastest_setup": "jit_compile",
                },
                "runs": {"jax": [{"batch_size": 128, "compute_dtype": "float32"}]},
            }
        },
        "time_to_accuracy": {
            "target": 0.9156,
            "jax": {"seconds_to_target": 300.0, "epochs_to_target": 4},
            "keras": {"best_test_accuracy": 0.91},
        },
    }
    text = benchmark.markdown(report)
    assert "| `cnn4` | 128, float32 | 1,500 |" in text and "0.75x" in text and "0.990" in text
    row = next(line for line in text.splitlines() if line.startswith("| `cnn4`"))
    assert row.endswith("| 0.75x | - | - |")  # No PyTorch: its img/s and ratio are dashes.
    assert "| config | Keras: fit defaults | Keras: jit_compile |" in text
    assert "| `cnn4` | 700 | 2,000 |" in text
    assert "after epoch 4, 300 s" in text and "never reached 0.9156" in text


def test_update_markdown_replaces_only_the_results_block(tmp_path):
    page = tmp_path / "PERF.md"
    page.write_text(f"intro\n{benchmark.BEGIN}\nold\n{benchmark.END}\noutro\n")
    assert benchmark.update_markdown(str(page), "new table")
    assert page.read_text() == f"intro\n{benchmark.BEGIN}\nnew table\n{benchmark.END}\noutro\n"
    other = tmp_path / "other.md"
    other.write_text("no markers")
    assert not benchmark.update_markdown(str(other), "x")
    assert other.read_text() == "no markers"


def test_named_block_and_from_json_rewrite_only_their_block(tmp_path):
    import json

    page = tmp_path / "PERF.md"
    page.write_text(
        f"a\n{benchmark.BEGIN}\ncpu\n{benchmark.END}\n<!-- h100:begin -->\nold\n<!-- h100:end -->\n"
    )
    report = {"date": "d", "machine": "1x H100", "repeats": 3, "configs": {"cnn4": {"jax": {}}}}
    (tmp_path / "r.json").write_text(json.dumps(report))
    argv = ["--from_json", str(tmp_path / "r.json"), "--markdown", str(page), "--block", "h100"]
    assert benchmark.main(argv) == 0
    text = page.read_text()
    assert f"{benchmark.BEGIN}\ncpu\n{benchmark.END}" in text
    assert "<!-- h100:begin -->\nMeasured d on 1x H100" in text and "old" not in text


def test_config_overrides():
    config = benchmark.load_config("cnn4+batch_size=512+compute_dtype=bfloat16")
    assert (config.batch_size, config.compute_dtype, config.model.name) == (512, "bfloat16", "cnn")
    with pytest.raises(ValueError, match="not key=value"):
        benchmark.load_config("cnn4+no_such_field=1")


def test_profile_times_the_step_s_operations():
    table = benchmark.profile_ops("mlp_4x2", num_steps=5)
    header = re.search(r"(\d+) scanned steps traced, ([\d,]+) us per step wall", table)
    assert header and header.group(1) == "5", table
    wall_us = float(header.group(2).replace(",", ""))
    rows = []
    for line in table.splitlines():
        if line.startswith("| `"):
            _, _op, computes, us, share, _ = line.split("|")
            rows.append((computes.strip(), float(us.replace(",", "")), float(share.strip(" %")) / 100))
    assert rows, table
    # Per step: each share is its time over the step's wall time, listed longest first
    # (shares to 0.1 %, times to 0.1 us, the wall time to 1 us in the table).
    for _, us, share in rows:
        assert abs(share - us / wall_us) <= 0.0006 + 1.5 * (0.05 + 0.5 * us / wall_us) / wall_us, table
        assert share >= 0.01, table
    assert [us for _, us, _ in rows] == sorted((us for _, us, _ in rows), reverse=True), table
    # The scan loop holds every step: timed per step, it fits in the step's wall time
    # (not num_steps times over).
    loop = [share for computes, _, share in rows if computes.endswith("/while")]
    assert len(loop) == 1 and 0 < loop[0] <= 1.05, table
    # The first layer's matmul is one of the operations timed, with a positive time.
    dense = [us for computes, us, _ in rows if computes.startswith("Dense_0/")]
    assert dense and all(us > 0 for us in dense), table
