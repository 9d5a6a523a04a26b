"""Config files, command-line overrides and the bad-value errors."""

import importlib
import os
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from fmnist_jax import configuration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    f[:-3]
    for f in os.listdir(os.path.join(ROOT, "configs"))
    if f.endswith(".py") and f not in ("__init__.py",)
)


def load_config(name):
    return importlib.import_module(f"configs.{name}").get_config()


def test_there_is_one_config_per_seed_model_plus_default_and_accelerator():
    assert len(CONFIGS) == 13 and {"default", "cnn4_accelerator"} <= set(CONFIGS)


@pytest.mark.parametrize("name", [c for c in CONFIGS if c != "default"])
def test_every_config_is_valid_and_documented(name):
    config = load_config(name)
    configuration.validate_config(config)
    assert config.name == name
    doc = importlib.import_module(f"configs.{name}").__doc__
    assert f"python launch.py --config=configs/{name}.py" in doc
    assert "Measured here" in doc


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
    "field, value, message",
    [
        ("batch_size", 0, "config.batch_size=0: must be >= 1"),
        ("learning_rate", 0.0, "config.learning_rate=0.0: must be > 0"),
        ("learning_rate", -1e-3, "config.learning_rate=-0.001: must be > 0"),
        ("validation_fraction", 0.0, "config.validation_fraction=0.0: must be in (0, 1)"),
        ("validation_fraction", 1.0, "config.validation_fraction=1.0: must be in (0, 1)"),
        ("optimizer", "adamax", "config.optimizer='adamax': unknown optimizer"),
        ("schedule", "step", "config.schedule='step': unknown schedule"),
        ("num_epochs", 0, "config.num_epochs=0: must be >= 1"),
        ("batch_size", 60_000, "config.batch_size=60000: exceeds the 54000 training examples"),
    ],
)
def test_bad_values_name_the_field(field, value, message):
    config = load_config("cnn4")
    config[field] = value
    with pytest.raises(configuration.ConfigError) as e:
        configuration.validate_config(config)
    assert str(e.value).startswith(message)


def test_bad_model_fields_name_the_field():
    config = load_config("cnn4")
    config.model.name = "resnet"
    with pytest.raises(configuration.ConfigError, match=r"config.model.name='resnet': unknown model"):
        configuration.validate_config(config)
    config = load_config("cnn3_wide")
    config.model.padding = ("SAME", "VALID", "FULL")
    with pytest.raises(configuration.ConfigError, match=r"config.model.padding=.*expected one of"):
        configuration.validate_config(config)
    config = load_config("cnn4")
    config.model.dense_dropout = 1.0
    with pytest.raises(configuration.ConfigError, match=r"config.model.dense_dropout=1.0: rates"):
        configuration.validate_config(config)


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
