"""The benchmark compares like with like: its Keras and PyTorch models are ours, built
from the same config fields, parameter for parameter."""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import load_config
from test_models import KERAS_PARAMS

from fmnist_jax import benchmark, configuration, models, parallel, steps
from fmnist_jax.benchmark import jax_bench

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


@pytest.mark.parametrize("variant", sorted(jax_bench.ABLATION_OVERRIDES))
def test_each_ablation_override_gives_a_valid_cnn4_config(variant):
    """Each ablation row's overrides apply to cnn4 and pass the config checks, and change it."""
    config = benchmark.load_config("cnn4" + jax_bench.ABLATION_OVERRIDES[variant])
    configuration.validate_config(config)
    assert config != load_config("cnn4")


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
    # Every row but the loop (which holds the others), with the small ones and the rest of
    # the wall time the trace names nothing for, adds up to the step's wall time.
    others = float(
        re.search(r"\| \d+ others, under 1 % each \| \| ([\d,.]+) \|", table).group(1).replace(",", "")
    )
    listed = sum(us for computes, us, _ in rows if not computes.endswith("/while"))
    assert abs(listed + others - wall_us) <= 0.01 * wall_us + 1, table
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


def test_conv_shapes_follow_the_network():
    """cnn4's convolutions at batch 128, by hand: 28 -> 14 -> 7 -> 3 after each pool."""
    assert jax_bench.conv_shapes(load_config("cnn4"), 128) == [
        ((128, 28, 28, 1), (3, 3, 1, 32), "SAME"),
        ((128, 14, 14, 32), (3, 3, 32, 64), "SAME"),
        ((128, 7, 7, 64), (3, 3, 64, 128), "SAME"),
        ((128, 3, 3, 128), (3, 3, 128, 256), "SAME"),
    ]
    # VALID convolutions shrink by the kernel less one before the pool.
    config = load_config("cnn4")
    config.model.padding = "VALID"
    assert [x for x, _, _ in jax_bench.conv_shapes(config, 8)] == [
        (8, 28, 28, 1), (8, 13, 13, 32), (8, 5, 5, 64), (8, 1, 1, 128),
    ]  # fmt: skip


def test_conv_table_rates(monkeypatch):
    seconds = {(2, 4, 4, 3): 1e-6, (2, 4, 4, 1): 1e-7}
    monkeypatch.setattr(jax_bench, "time_conv", lambda x, k, padding, dtype: seconds[x])
    table = jax_bench.conv_table(
        [((2, 4, 4, 3), (3, 3, 3, 5), "SAME"), ((2, 4, 4, 1), (2, 2, 1, 5), "VALID")]
    )
    # 3 passes x 2 x 2 images x 16 outputs x 3x3x3x5 = 25,920 FLOP in 1 us; the first
    # layer's input gradient is not computed (2 passes): 2 x 2 x 2 x 9 outputs x 2x2x1x5 = 1,440 in 0.1 us.
    assert "| 2x4x4x3 | 3x3x3x5 | 0.00 | 26 |" in table
    assert "| 2x4x4x1 | 2x2x1x5 | 0.00 | 14 |" in table


def test_time_conv_runs_the_training_convolution():
    assert 0 < jax_bench.time_conv((2, 6, 6, 3), (3, 3, 3, 4), "SAME", seconds=0.01) < 1
    assert 0 < jax_bench.time_conv((2, 6, 6, 1), (3, 3, 1, 4), "VALID", "bfloat16", seconds=0.01) < 1


# --------------------------------------------- peers in steady state, the limit


def listed_clock(times):
    """A clock that returns `times` in order, then one more second per call."""
    state = {"queue": list(times), "now": 0.0}

    def clock():
        state["now"] = state["queue"].pop(0) if state["queue"] else state["now"] + 1.0
        return state["now"]

    return clock


def test_step_clock_times_only_steady_steps():
    """Nothing before the first mark, no interval starting in the warm-up, no gap
    after a restart: images over the sum of the steady steps' own times."""
    clock = benchmark.StepClock(batch=4, warmup_steps=2, clock=listed_clock([10, 11, 11.5, 12.5, 20, 20.25]))
    for n in (1, 1, 1, 2):  # Intervals start at steps 1 (warm-up), 2 and 3 (steady).
        clock.mark(n)
    clock.restart()  # An epoch's end: the 12.5 -> 20 gap is not a step.
    clock.mark(1)
    clock.mark(1)
    result = clock.result()
    steady_images = (1 + 2 + 1) * 4
    steady_seconds = (11.5 - 11) + (12.5 - 11.5) + (20.25 - 20)
    assert result["steady_steps"] == 4
    assert result["steady_seconds"] == pytest.approx(steady_seconds)
    assert result["train_images_per_second"] == pytest.approx(steady_images / steady_seconds)
    with pytest.raises(RuntimeError, match="too short"):
        benchmark.StepClock(batch=4, warmup_steps=2).result()


def test_keras_steady_fit_times_batches_inside_one_fit():
    """12 steps an epoch, 2 per execution: the clock is marked after each execution;
    the first 10 steps are warm-up, the gap at the epoch's end (100 s here) is left
    out, and the fit stops once 4 s of steady steps are timed."""
    import keras

    from fmnist_jax.benchmark import keras_bench

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=2,
    )
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)  # Cut to 48: whole executions.
    y = np.zeros(50, np.int64)
    # Epoch 1: marks after steps 2, 4, ..., 12 at 0-5 s; epoch 2: after steps 14, 16, 18, 20.
    clock = listed_clock([0, 1, 2, 3, 4, 5, 105, 106, 107, 108, 109, 110])
    result = keras_bench.steady_fit(model, x, y, batch=4, steady_seconds=4, clock=clock)
    # Steady: 10->12 (1 s), then 14->16, 16->18, 18->20 (1 s each); 12->14 spans the epoch's end.
    assert (result["steady_steps"], result["steady_seconds"]) == (8, 4.0)
    assert result["train_images_per_second"] == pytest.approx(8 * 4 / 4.0)
    assert len(model.history.history["loss"]) == 2  # Stopped in the second epoch.


_FREED_RSS = """
import sys
import numpy as np
from fmnist_jax.benchmark import torch_bench

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

if sys.argv[1] == "kept":
    torch_bench.keep_freed_memory()
before = rss()
block = np.ones(64 << 17)  # 64 MiB, every page touched.
del block
print((rss() - before) >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_mallopt_setups_keep_freed_memory():
    """keep_freed_memory (PyTorch's "mallopt" setups): a freed 64 MiB block stays in the
    process for the next allocation; by default glibc returns it to the kernel at once."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runs = [
        subprocess.run(
            [sys.executable, "-c", _FREED_RSS, arg], capture_output=True, text=True, check=True, cwd=root
        )
        for arg in ("kept", "default")
    ]
    kept, default = (int(run.stdout) for run in runs)
    assert kept >= 60 and default <= 4, (kept, default)


def test_torch_setups_include_channels_last():
    torch = pytest.importorskip("torch")
    from fmnist_jax.benchmark import cli, torch_bench

    setups = cli.setups_to_time(cli.installed_frameworks("jax,keras,torch"))
    assert setups["torch"] == [
        "default (NCHW)",
        "channels_last",
        "default (NCHW), mallopt",
        "channels_last, mallopt",
    ]
    assert "jax" not in setups and "jit_compile" in setups["keras"]
    config = cnn_config(conv_features=(4, 8), dense_features=(8,))
    x = torch.from_numpy(np.random.default_rng(0).random((40, 1, 28, 28), np.float32))
    default = torch_bench.to_setup(benchmark.torch_model(config), x, "default (NCHW)")[0]
    model, xl = torch_bench.to_setup(benchmark.torch_model(config), x, "channels_last")
    assert xl.is_contiguous(memory_format=torch.channels_last)  # One channel: also NCHW's layout.
    weights = [
        [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d)][1] for net in (default, model)
    ]
    assert weights[0].shape == (8, 4, 3, 3) and weights[0].is_contiguous()
    assert weights[1].is_contiguous(memory_format=torch.channels_last) and not weights[1].is_contiguous()
    # 10 steps an epoch, a mark (1 s) after each: steps 0-9 are warm-up, then 3 steady steps.
    y = torch.zeros(40, dtype=torch.int64)
    result = torch_bench.steady_train(model, xl, y, batch=4, steady_seconds=3, clock=listed_clock([]))
    assert (result["steady_steps"], result["steady_seconds"]) == (3, 3.0)


def test_training_flops_per_image_by_hand():
    """cnn4: 3x3 'SAME' convolutions 1->32 at 28x28, 32->64 at 14x14, 64->128 at 7x7,
    128->256 at 3x3 (pooling floors 7 to 3), then 256->128 and 128->10; two FLOPs per
    multiply-add; training is the forward, the kernel gradients (as much again) and
    the input gradients (as much again, none for the first layer)."""
    convs = [28 * 28 * 9 * 1 * 32, 14 * 14 * 9 * 32 * 64, 7 * 7 * 9 * 64 * 128, 3 * 3 * 9 * 128 * 256]
    dense = [256 * 128, 128 * 10]
    forward = 2 * (sum(convs) + sum(dense))
    by_hand = forward + forward + (forward - 2 * convs[0])
    assert by_hand == 60_384_768  # 60.4 MFLOP per training image.
    assert benchmark.training_flops_per_image(load_config("cnn4")) == by_hand
    mlp = 2 * (784 * 256 + 256 * 10)
    assert benchmark.training_flops_per_image(load_config("mlp_256")) == 3 * mlp - 2 * 784 * 256
    # 'VALID' shrinks each side by k - 1 before pooling: 28 -> 24 -> 12, then 12 -> 10 -> 5.
    valid = cnn_config(conv_features=(4, 6), kernel_size=(5, 3), padding="VALID", dense_features=())
    layers = [24 * 24 * 25 * 1 * 4, 10 * 10 * 9 * 4 * 6, 5 * 5 * 6 * 10]
    assert benchmark.training_flops_per_image(valid) == 2 * (3 * sum(layers) - layers[0])


def test_peak_share_and_the_limit_table():
    assert benchmark.peak_share(2000.0, 60_384_768, 200.0) == pytest.approx(2000 * 60.384768e6 / 200e9)
    rates = {"jax": 2000.0, "keras": 1500.0, "torch": 2500.0}
    report = {
        "date": "d",
        "machine": "m",
        "repeats": 1,
        "matmul_peak": {
            "size": 4096,
            "cores": 2,
            "repeats": 5,
            "xla_gflops": 190.0,
            "numpy_gflops": 200.0,
            "numpy_blas": "openblas",
            "gflops": 200.0,
        },
        "configs": {
            "cnn4": {
                **{f: {"train_images_per_second": r} for f, r in rates.items()},
                "training_flops_per_image": 60_384_768,
            }
        },
    }
    text = benchmark.markdown(report)
    assert "XLA's dot 190 GFLOP/s, NumPy (openblas) 200 GFLOP/s; the limit is 200 GFLOP/s" in text
    shares = " | ".join(f"{round(100 * r * 60.384768e6 / 200e9)}%" for r in rates.values())
    assert f"| `cnn4` | 60.4 | {200e9 / 60_384_768:,.0f} | {shares} |" in text, text
    assert shares == "60% | 45% | 75%"
    assert "bfloat16" not in text  # A report from before the bfloat16 dot was timed.
    report["matmul_peak"]["xla_bf16_gflops"] = 812.4
    text = benchmark.markdown(report)
    assert "the limit is 200 GFLOP/s. In bfloat16 (float32 sums) XLA's dot ran at 812 GFLOP/s." in text
    assert f"| `cnn4` | 60.4 | {200e9 / 60_384_768:,.0f} | {shares} |" in text  # Not a limit.


def test_matmul_peak_times_the_bfloat16_dot_too():
    """limits.matmul_peak: float32 rates through XLA and NumPy (the limit: the faster), and
    XLA's bfloat16 dot with float32 sums beside them."""
    from fmnist_jax.benchmark import limits

    peak = limits.matmul_peak(size=64, repeats=1)
    assert peak["gflops"] == max(peak["xla_gflops"], peak["numpy_gflops"])
    assert peak["xla_bf16_gflops"] > 0


def test_fastest_peer_setup_counts_and_a_missing_torch_is_named(monkeypatch):
    """Each peer setup runs in its own child; the fastest setup is the framework's
    figure, our ratio is to the fastest peer, every setup is recorded; a framework
    that does not import is named in the block."""
    from fmnist_jax.benchmark import cli

    rates = {"fit defaults": 900.0, "inter-op threads 2": 950.0, "jit_compile": 1600.0}
    rates |= {"jit_compile, steps_per_execution": 1000.0, "default (NCHW)": 1800.0, "channels_last": 2500.0}
    rates |= {"default (NCHW), mallopt": 1700.0, "channels_last, mallopt": 2400.0}
    calls = []

    def run_child(args, env=None):
        calls.append(args)
        if args[1] == "matmul_peak":
            return {"gflops": 200.0, "xla_gflops": 200.0, "numpy_gflops": 190.0, "numpy_blas": "b"} | {
                "size": 8,
                "cores": 2,
                "repeats": 1,
            }
        if args[1] == "jax":
            return {key: 2000.0 for key in cli.JAX_SUMMARY_KEYS} | {"real_over_synthetic": 1.0}
        setup = args[args.index("--variant") + 1]
        return {"framework": args[1], "train_images_per_second": rates[setup], "peak_rss_mib": 1.0}

    monkeypatch.setattr(cli, "run_child", run_child)
    summary = cli.measure_config("cnn4", ["jax", "keras", "torch"], repeats=1)
    assert summary["keras"]["setups"] == {s: rates[s] for s in cli.PEER_SETUPS["keras"]}
    assert summary["torch"]["setups"] == {s: rates[s] for s in cli.PEER_SETUPS["torch"]}
    assert summary["keras"]["fastest_setup"] == "jit_compile"
    assert summary["jax"]["over_keras"] == pytest.approx(2000 / 1600)
    assert summary["jax"]["over_fastest_peer"] == pytest.approx(2000 / 2500)
    assert summary["fastest_peer"] == "torch: channels_last"
    assert summary["training_flops_per_image"] == 60_384_768
    text = benchmark.markdown({"date": "d", "machine": "m", "repeats": 1, "configs": {"cnn4": summary}})
    assert "| PyTorch: channels_last | 0.80x |" in text and "| PyTorch: default (NCHW) |" in text

    monkeypatch.setattr(cli.input_pipeline, "installed", lambda module: module != "torch")
    calls.clear()
    args = cli.parser().parse_args(["--configs=cnn4", "--repeats=1"])
    report = cli.measure(args)
    assert report["not_installed"] == ["torch"] and "torch" not in report["configs"]["cnn4"]
    assert not any(a[1] == "torch" for a in calls)
    assert report["hardware"]["class"] and report["matmul_peak"]["gflops"] == 200.0
    text = benchmark.markdown(report)
    assert "PyTorch: not measured, `torch` does not import here" in text
    assert "pip install torch==2.13.0" in text


def test_markdown_names_the_cpu_and_its_flags():
    cpu = {"model_name": "AMD EPYC", "vendor": "AuthenticAMD", "family": 25, "model": 17}
    cpu |= {"generation": "Zen 4", "avx2": True, "avx512f": True, "avx512_bf16": True}
    assert benchmark.cpu_class(cpu) == "Zen 4 / AVX-512"
    zen3 = cpu | {"generation": "Zen 3", "avx512f": False, "avx512_bf16": False}
    assert benchmark.cpu_class(zen3) == "Zen 3 / AVX2"
    intel = cpu | {"vendor": "GenuineIntel", "generation": None, "family": 6, "model": 143}
    assert benchmark.cpu_class(intel) == "GenuineIntel family 6 model 143 / AVX-512"
    report = {"date": "d", "machine": "m", "repeats": 1, "configs": {}}
    report["hardware"] = {"class": "Zen 3 / AVX2", "cpu": zen3}
    assert "CPU: AMD EPYC, family 25 model 17; avx512f no, avx512_bf16 no; class Zen 3 / AVX2." in (
        benchmark.markdown(report)
    )
    emerald = cpu | {"vendor": "GenuineIntel", "generation": "Emerald Rapids", "family": 6, "model": 207}
    emerald |= {"model_name": "Intel(R) Xeon(R) Processor", "amx_bf16": True}
    report["hardware"] = {"class": benchmark.cpu_class(emerald), "cpu": emerald}
    assert (
        "family 6 model 207; avx512f yes, avx512_bf16 yes, amx_bf16 yes; class Emerald Rapids / AVX-512."
        in (benchmark.markdown(report))
    )


def test_markdown_writer_replaces_only_its_hardware_class_block(tmp_path):
    zen3, zen4 = (
        benchmark.class_markers("benchmark", "Zen 3 / AVX2"),
        benchmark.class_markers("benchmark", "Zen 4 / AVX-512"),
    )
    assert zen4 == ("<!-- benchmark [Zen 4 / AVX-512]:begin -->", "<!-- benchmark [Zen 4 / AVX-512]:end -->")
    page = tmp_path / "PERF.md"
    before = (
        f"intro\n{benchmark.BEGIN}\n{zen3[0]}\nzen 3 numbers\n{zen3[1]}\n\n"
        f"{zen4[0]}\nold zen 4 numbers\n{zen4[1]}\n{benchmark.END}\noutro\n"
    )
    page.write_text(before)
    assert benchmark.update_markdown(str(page), "new zen 4", hardware_class="Zen 4 / AVX-512")
    assert page.read_text() == before.replace("old zen 4 numbers", "new zen 4")
    # A class not there yet gets its own block at the end; the others stay.
    assert benchmark.update_markdown(str(page), "zen 5", hardware_class="Zen 5 / AVX-512")
    zen5 = benchmark.class_markers("benchmark", "Zen 5 / AVX-512")
    assert page.read_text() == before.replace("old zen 4 numbers", "new zen 4").replace(
        f"{zen4[1]}\n{benchmark.END}", f"{zen4[1]}\n\n{zen5[0]}\nzen 5\n{zen5[1]}\n{benchmark.END}"
    )
    # A report without a class does not overwrite the classes' blocks.
    current = page.read_text()
    assert not benchmark.update_markdown(str(page), "classless")
    assert page.read_text() == current
    # The command line files a report under its own class.
    import json

    report = {"date": "d", "machine": "m", "repeats": 1, "configs": {}, "hardware": {"class": "Zen 3 / AVX2"}}
    (tmp_path / "r.json").write_text(json.dumps(report))
    assert benchmark.main(["--from_json", str(tmp_path / "r.json"), "--markdown", str(page)]) == 0
    text = page.read_text()
    assert f"{zen3[0]}\nMeasured d on m" in text and "zen 3 numbers" not in text
    assert "new zen 4" in text and "zen 5" in text
