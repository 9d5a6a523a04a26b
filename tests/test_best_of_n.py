"""--mode=best_of_n: N models at once with vmap, the lowest validation loss kept."""

import importlib

import jax
import numpy as np

from fmnist_jax import best_of_n, input_pipeline, train


def tiny_config(n):
    config = importlib.import_module("configs.mlp_4x2").get_config()
    config.validation_fraction = 0.99  # 600 training images per model: 18 steps of 32.
    config.num_epochs = 2
    config.best_of_n = n
    return config


def test_vmapped_models_equal_one_by_one_and_the_best_is_kept(tmp_path):
    config = tiny_config(3)
    config.best_of_n_sequential_baseline = True
    results = best_of_n.best_of_n(config, str(tmp_path))

    val_loss = np.asarray(results["validation_loss"])
    assert results["chosen_model"] == int(np.argmin(val_loss))
    assert len(set(val_loss.tolist())) == 3  # Different carves and inits: different models.
    assert results["sequential_train_seconds"] > 0 and results["vmap_speedup"] > 0
    assert results["test"]["accuracy"] == results["test_accuracy"][results["chosen_model"]]

    # Each carve is its own: model i validates on split seed split_seed + i.
    carves = best_of_n._carves(config, 3)
    assert not np.array_equal(carves[0][1], carves[1][1])
    # The saved checkpoint is the chosen model: evaluating it on its own carve
    # (config.json carries its split seed) gives the recorded validation loss.
    report = train.evaluate_checkpoint(str(tmp_path), "latest")
    np.testing.assert_allclose(report["validation"]["loss"], val_loss[results["chosen_model"]], rtol=1e-5)
    assert report["test"]["accuracy"] == results["test"]["accuracy"]


def test_one_model_of_the_stack_equals_training_it_alone():
    config = tiny_config(2)
    arrays = input_pipeline.load_arrays()
    data = (jax.numpy.asarray(arrays["train_images"]), jax.numpy.asarray(arrays["train_labels"]))
    carves = best_of_n._carves(config, 2)
    both, record_both = best_of_n._train(config, 2, data, carves, [0, 1], lambda s: None)
    alone, record_alone = best_of_n._train(config, 1, data, carves, [1], lambda s: None)
    for a, b in zip(
        jax.tree_util.tree_leaves(both.params), jax.tree_util.tree_leaves(alone.params), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a)[1], np.asarray(b)[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        record_both["history"][-1]["validation_loss"][1],
        record_alone["history"][-1]["validation_loss"][0],
        rtol=1e-5,
    )
