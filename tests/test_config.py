"""Config files, command-line overrides and the bad-value errors."""

import importlib
import os
import subprocess
import sys

import pytest
from absl import flags
from conftest import load_config
from ml_collections import config_flags

from fmnist_jax import configuration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    f[:-3]
    for f in os.listdir(os.path.join(ROOT, "configs"))
    if f.endswith(".py") and f not in ("__init__.py",)
)


SEED_MODELS = {
    "mlp_4x2", "mlp_20x3", "mlp_20x4", "mlp_256", "mlp_128",
    "cnn2_2x2", "cnn2_64", "cnn2_dropout", "cnn3_wide", "cnn3", "cnn4",
}  # fmt: skip


def test_there_is_one_config_per_seed_model_plus_default_accelerator_and_flagships():
    assert set(CONFIGS) == SEED_MODELS | {"default", "cnn4_accelerator", "flagship", "flagship_cpu"}


NOT_YET_MEASURED = {"flagship"}


@pytest.mark.parametrize("name", [c for c in CONFIGS if c != "default"])
def test_every_config_is_valid_and_documented(name):
    config = load_config(name)
    configuration.validate_config(config)
    assert config.name == name
    doc = importlib.import_module(f"configs.{name}").__doc__
    assert f"python launch.py --config=configs/{name}.py" in doc
    # Every config says what it measured, and where; the GPU flagship waits for a GPU.
    assert "Measured here" in doc or (name in NOT_YET_MEASURED and "Not yet measured on a GPU" in doc)


def test_command_line_overrides():
    argv = [
        "launch.py",
        f"--config={ROOT}/configs/cnn4.py",
        "--config.num_epochs=3",
        "--config.batch_size=256",
        "--config.model.conv_features=(8,16)",
        "--config.schedule=cosine",
    ]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=argv)
    fv(argv)
    config = fv.config
    assert (config.num_epochs, config.batch_size, config.schedule) == (3, 256, "cosine")
    assert tuple(config.model.conv_features) == (8, 16)
    configuration.validate_config(config)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"batch_size": 0}, "config.batch_size=0: must be >= 1"),
        ({"learning_rate": 0.0}, "config.learning_rate=0.0: must be > 0"),
        ({"learning_rate": -1e-3}, "config.learning_rate=-0.001: must be > 0"),
        ({"validation_fraction": 0.0}, "config.validation_fraction=0.0: must be in (0, 1)"),
        ({"validation_fraction": 1.0}, "config.validation_fraction=1.0: must be in (0, 1)"),
        ({"optimizer": "adamax"}, "config.optimizer='adamax': unknown optimizer"),
        ({"schedule": "step"}, "config.schedule='step': unknown schedule"),
        ({"num_epochs": 0}, "config.num_epochs=0: must be >= 1"),
        ({"batch_size": 60_000}, "config.batch_size=60000: exceeds the 54000 training examples"),
        # One past the limit, and the limit follows validation_fraction (60,000 - 30,000).
        ({"batch_size": 54_001}, "config.batch_size=54001: exceeds the 54000 training examples"),
        (
            {"batch_size": 30_001, "validation_fraction": 0.5},
            "config.batch_size=30001: exceeds the 30000 training examples",
        ),
        ({"parallelism": "xmap"}, "config.parallelism='xmap': expected one of ('jit', 'pmap')"),
        ({"compute_dtype": "float16"}, "config.compute_dtype='float16': expected one of"),
        ({"steps_per_dispatch": -1}, "config.steps_per_dispatch=-1: must be >= 0"),
        (
            {"steps_per_dispatch": 5, "parallelism": "pmap"},
            "config.steps_per_dispatch=5: scanned steps need parallelism='jit'",
        ),
        ({"eval_batch_size": 0}, "config.eval_batch_size=0: must be >= 1"),
        ({"weight_decay": -0.1}, "config.weight_decay=-0.1: must be >= 0"),
        ({"label_smoothing": 1.0}, "config.label_smoothing=1.0: must be in [0, 1)"),
        ({"label_smoothing": -0.1}, "config.label_smoothing=-0.1: must be in [0, 1)"),
        ({"warmup_epochs": -1.0}, "config.warmup_epochs=-1.0: must be >= 0"),
        ({"final_lr_fraction": 1.5}, "config.final_lr_fraction=1.5: must be in [0, 1]"),
        ({"checkpoint_every_epochs": 0}, "config.checkpoint_every_epochs=0: must be >= 1"),
        ({"checkpoint_every_steps": -1}, "config.checkpoint_every_steps=-1: must be >= 0"),
        (
            {"stop_at_test_accuracy": 1.5, "test_every_epoch": True},
            "config.stop_at_test_accuracy=1.5: must be in [0, 1]",
        ),
        (
            {"stop_at_test_accuracy": 0.9},
            "config.stop_at_test_accuracy=0.9: needs config.test_every_epoch=True",
        ),
        ({"lr_find_min": 0.0}, "config.lr_find_min=0.0: must be > 0"),
        ({"lr_find_max": 1e-6}, "config.lr_find_max=1e-06: must be > lr_find_min"),
        ({"lr_find_steps": 9}, "config.lr_find_steps=9: must be >= 10"),
        ({"epochs_per_decade": 0.0}, "config.epochs_per_decade=0.0: must not be 0"),
        (
            {"schedule": "one_cycle", "warmup_epochs": 0.0},
            "config.warmup_epochs=0.0: one_cycle needs a rising phase > 0",
        ),
    ],
)
def test_bad_values_name_the_field(overrides, message):
    config = load_config("cnn4")
    config.update(overrides)
    with pytest.raises(configuration.ConfigError) as e:
        configuration.validate_config(config)
    assert str(e.value).startswith(message)


@pytest.mark.parametrize(
    "overrides",
    [
        {"batch_size": 54_000},
        {"batch_size": 30_000, "validation_fraction": 0.5},
        {"batch_size": 1, "eval_batch_size": 1},
        {"steps_per_dispatch": 1, "parallelism": "pmap"},
        {"steps_per_dispatch": 7},
        {"label_smoothing": 0.0, "weight_decay": 0.0, "warmup_epochs": 0.0},
        {"final_lr_fraction": 0.0},
        {"final_lr_fraction": 1.0},
        {"stop_at_test_accuracy": 1.0, "test_every_epoch": True},
        {"lr_find_steps": 10, "lr_find_min": 1e-3, "lr_find_max": 1.001e-3},
        {"epochs_per_decade": -20.0, "schedule": "exponential"},
        {"schedule": "one_cycle", "warmup_epochs": 0.5},
        {"optimizer": "sgd", "compute_dtype": "bfloat16", "checkpoint_every_steps": 0},
    ],
)
def test_values_at_the_limits_are_accepted(overrides):
    config = load_config("cnn4")
    config.update(overrides)
    configuration.validate_config(config)


@pytest.mark.parametrize(
    "name, field, value, message",
    [
        ("cnn4", "name", "transformer", "config.model.name='transformer': unknown model"),
        ("cnn4", "name", "resnet", "config.model.name='resnet': needs model.stage_features"),
        ("mlp_256", "name", "cnn", "config.model.name='cnn': needs model.conv_features"),
        ("cnn4", "activation", "mish", "config.model.activation='mish': unknown activation"),
        (
            "cnn3_wide",
            "padding",
            ("SAME", "VALID", "FULL"),
            "config.model.padding=('SAME', 'VALID', 'FULL'): expected one of",
        ),
        ("cnn4", "dense_dropout", 1.0, "config.model.dense_dropout=1.0: rates must be in [0, 1)"),
        (
            "cnn2_dropout",
            "conv_dropout",
            (0.25, -0.1),
            "config.model.conv_dropout=(0.25, -0.1): rates must be in [0, 1)",
        ),
        ("cnn4", "conv_features", (), "config.model.conv_features=(): needs at least one conv block"),
        ("cnn4", "conv_features", (32, 0), "config.model.conv_features=(32, 0): must be >= 1"),
        ("cnn2_2x2", "kernel_size", 0, "config.model.kernel_size=0: must be >= 1"),
        ("mlp_20x3", "hidden", (20, 0, 20), "config.model.hidden=(20, 0, 20): widths must be >= 1"),
        ("mlp_256", "dropout", 1.5, "config.model.dropout=1.5: rates must be in [0, 1)"),
        ("cnn4", "bn_op", "fast", "config.model.bn_op='fast': expected one of ('fused', 'flax')"),
        ("cnn4", "pool_op", "avg", "config.model.pool_op='avg': expected one of ('maxima', 'reduce_max')"),
        (
            "cnn4",
            "conv_op",
            "fft",
            "config.model.conv_op='fft': expected one of ('custom', 'onednn', 'auto', 'lax')",
        ),
        ("cnn4", "kernel_grad_chunks", (1, 0), "config.model.kernel_grad_chunks=(1, 0): must be >= 1"),
        (
            "cnn4",
            "conv_op",
            "lax",
            "config.model.kernel_grad_chunks=(1, 8, 1, 1): needs model.conv_op='custom'",
        ),
    ],
)
def test_bad_model_fields_name_the_field(name, field, value, message):
    config = load_config(name)
    config.model[field] = value
    with pytest.raises(configuration.ConfigError) as e:
        configuration.validate_config(config)
    assert str(e.value).startswith(message)


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.batch_size=0", "config.batch_size=0: must be >= 1"),
        ("--config.optimizer=lion", "config.optimizer='lion': unknown optimizer"),
    ],
)
def test_launch_rejects_bad_values_before_any_work(tmp_path, override, message):
    proc = subprocess.run(
        [sys.executable, "launch.py", "--config=configs/cnn4.py", override, f"--workdir={tmp_path}/w"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert f"error: {message}" in proc.stderr
    assert "compiled" not in proc.stdout
    assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--config=configs/mlp256.py"],
            "error: --config=configs/mlp256.py: no such file; did you mean 'mlp_256.py'?",
        ),
        (
            ["--config=configs/mlp_256.py", "--config.learning_rat=0.1"],
            "error: --config.learning_rat: configs/mlp_256.py has no field 'learning_rat'; "
            "did you mean 'learning_rate'?",
        ),
        (
            ["--config=configs/mlp_256.py", "--config.model.dropout=0.5"],
            "error: --config.model.dropout: configs/mlp_256.py has no field 'model.dropout' (model has "
            "hidden, name); the mlp model takes dropout: set it in a copy of the config file",
        ),
        (
            ["--config=configs/mlp_256.py", "--config.batch_size=abc"],
            "error: flag --config.batch_size=abc: invalid literal for int() with base 10: 'abc'",
        ),
    ],
    ids=["config_file", "field", "model_field", "value"],
)
def test_command_line_typos_are_one_line_with_the_closest_name(args, expected):
    proc = subprocess.run(
        [sys.executable, "launch.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [expected]
