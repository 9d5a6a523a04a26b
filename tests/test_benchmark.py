"""The benchmark compares like with like: its Keras models are ours, parameter for parameter."""

import importlib

import jax
import pytest

from fmnist_jax import benchmark, models

CONFIGS = ["mlp_256", "mlp_20x3", "cnn2_2x2", "cnn2_dropout", "cnn3_wide", "cnn4"]


@pytest.mark.parametrize("name", CONFIGS)
def test_keras_model_has_our_parameter_count(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    ours = models.create_model(config.model)
    shapes = jax.eval_shape(lambda: models.init_variables(ours, jax.random.PRNGKey(0)))
    assert benchmark.keras_model(config).count_params() == models.count_parameters(shapes)


def test_markdown_reports_ratios():
    report = {
        "date": "d",
        "machine": "m",
        "repeats": 3,
        "configs": {
            "cnn4": {
                "jax": {"train_images_per_second": 1500.0, "over_keras": 0.75, "real_over_synthetic": 0.99},
                "keras": {"train_images_per_second": 2000.0},
            }
        },
        "time_to_accuracy": {
            "target": 0.9156,
            "jax": {"seconds_to_target": 300.0, "epochs_to_target": 4},
            "keras": {"best_test_accuracy": 0.91},
        },
    }
    text = benchmark.markdown(report)
    assert "| `cnn4` | 1,500 |" in text and "0.75x" in text and "0.990" in text
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
