"""The learning-rate range test (--mode=lr_find)."""

import importlib
import json

import matplotlib.image
import numpy as np
import pytest

from fmnist_jax import configuration, lr_finder


def test_sweep_rates_are_exponential_between_the_bounds():
    rates = lr_finder.sweep_rates(1e-6, 1.0, 7)
    np.testing.assert_allclose(rates, [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0], rtol=1e-12)


def test_smoothing_is_bias_corrected_and_the_rule():
    np.testing.assert_allclose(lr_finder.smooth(np.full(5, 2.0)), np.full(5, 2.0))
    rates = np.array([1e-4, 1e-3, 1e-2, 1e-1])
    assert lr_finder.suggest(rates, np.array([2.0, 1.5, 1.0, 3.0])) == pytest.approx(1e-3)


def test_range_test_on_real_data(tmp_path):
    config = importlib.import_module("configs.mlp_256").get_config()
    config.lr_find_steps = 80
    config.lr_find_min = 1e-5
    config.lr_find_max = 10.0
    result = lr_finder.find_learning_rate(config, str(tmp_path))
    assert 10 <= result["steps_run"] <= 80
    assert 1e-5 / 10 <= result["suggested_learning_rate"] <= 1.0
    assert min(result["smoothed_losses"]) < result["smoothed_losses"][0]  # Some rate helps.
    with open(tmp_path / "lr_find.json") as f:
        assert json.load(f)["suggested_learning_rate"] == result["suggested_learning_rate"]
    image = matplotlib.image.imread(tmp_path / "lr_find.png")
    assert image.shape[:2] == (450, 700)


def test_bad_sweep_bounds_name_the_field():
    config = importlib.import_module("configs.mlp_256").get_config()
    config.lr_find_max = 1e-7
    with pytest.raises(configuration.ConfigError, match=r"config\.lr_find_max=1e-07: must be > lr_find_min"):
        configuration.validate_config(config)
