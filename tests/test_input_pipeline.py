"""The input pipeline on the real prepared Fashion-MNIST."""

import hashlib
import os

import numpy as np
import pytest

from fmnist_jax import input_pipeline, train


def test_split_shapes_dtypes_and_sizes(splits):
    expected = {"train": 54_000, "validation": 6_000, "test": 10_000}
    for name, split in splits.items():
        assert split.images.shape == (expected[name], 28, 28, 1)
        assert split.images.dtype == np.uint8
        assert split.labels.shape == (expected[name],)
        assert split.labels.dtype == np.int32
        assert set(np.unique(split.labels)) == set(range(10))


def test_value_range_with_and_without_normalization(splits):
    images = splits["validation"].images[:500]
    assert images.min() == 0 and images.max() == 255
    scaled = np.asarray(train.preprocess(images, normalize=True))
    raw = np.asarray(train.preprocess(images, normalize=False))
    assert scaled.dtype == raw.dtype == np.float32
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    assert raw.min() == 0.0 and raw.max() == 255.0
    np.testing.assert_allclose(scaled * 255.0, raw, rtol=1e-6)


def test_train_and_validation_are_disjoint_and_cover_train(splits):
    train_idx, val_idx = splits["train"].index, splits["validation"].index
    assert np.intersect1d(train_idx, val_idx).size == 0
    np.testing.assert_array_equal(np.union1d(train_idx, val_idx), np.arange(60_000))


def test_validation_fraction_and_seed():
    a_train, a_val = input_pipeline.carve_validation(60_000, 0.2, seed=42)
    b_train, b_val = input_pipeline.carve_validation(60_000, 0.2, seed=42)
    _, c_val = input_pipeline.carve_validation(60_000, 0.2, seed=43)
    assert (len(a_train), len(a_val)) == (48_000, 12_000)
    for fraction in (0.1, 0.2, 0.33333):
        train_idx, _ = input_pipeline.carve_validation(60_000, fraction, seed=0)
        assert input_pipeline.num_train_examples(fraction) == len(train_idx)
    np.testing.assert_array_equal(a_val, b_val)
    np.testing.assert_array_equal(a_train, b_train)
    assert not np.array_equal(a_val, c_val)


def test_same_seed_same_order(splits):
    split = splits["train"]
    first = [labels for _, labels in input_pipeline.train_batches(split, 1000, seed=7, epoch=1)]
    again = [labels for _, labels in input_pipeline.train_batches(split, 1000, seed=7, epoch=1)]
    other_epoch = [labels for _, labels in input_pipeline.train_batches(split, 1000, seed=7, epoch=2)]
    other_seed = [labels for _, labels in input_pipeline.train_batches(split, 1000, seed=8, epoch=1)]
    assert len(first) == 54
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(again))
    assert not np.array_equal(np.concatenate(first), np.concatenate(other_epoch))
    assert not np.array_equal(np.concatenate(first), np.concatenate(other_seed))
    # An epoch is a permutation: every label count is preserved.
    np.testing.assert_array_equal(
        np.bincount(np.concatenate(first), minlength=10), np.bincount(split.labels, minlength=10)
    )


def test_eval_batches_cover_every_example_once(splits):
    split = splits["validation"]
    images, labels, masks = zip(*input_pipeline.eval_batches(split, 700), strict=True)
    assert all(len(m) == 700 for m in masks)
    mask = np.concatenate(masks).astype(bool)
    assert mask.sum() == len(split)
    np.testing.assert_array_equal(np.concatenate(labels)[mask], split.labels)
    np.testing.assert_array_equal(np.concatenate(images)[mask], split.images)


def test_restored_debian_files_match_tfds_checksums(tmp_path):
    if not os.path.isdir(input_pipeline.DEBIAN_DIR):
        pytest.skip("dataset-fashion-mnist is not installed")
    import tensorflow_datasets as tfds

    registered = {}
    builder = tfds.builder("fashion_mnist")
    for url, info in builder.url_infos.items():
        registered[url.rsplit("/", 1)[-1]] = (info.size, info.checksum)
    for name in input_pipeline.IDX_FILES:
        dst = tmp_path / name
        input_pipeline.restore_upstream_gzip(os.path.join(input_pipeline.DEBIAN_DIR, name), str(dst))
        data = dst.read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == registered[name]
        assert input_pipeline.UPSTREAM_SHA256[name] == registered[name][1]


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(input_pipeline.DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        input_pipeline.load_splits(data_dir=str(tmp_path), prepare_if_missing=False)


def test_numpy_cache_equals_tfds_and_is_rebuilt_when_damaged(splits):
    cached = input_pipeline._load_tfds_arrays(None)
    images, labels = input_pipeline._load_tfds_split("test", None)
    np.testing.assert_array_equal(cached["test_images"], images)
    np.testing.assert_array_equal(cached["test_labels"], labels)
    np.testing.assert_array_equal(cached["test_images"], splits["test"].images)
    cache = os.path.join(input_pipeline._builder(None).data_dir, "numpy_cache.npz")
    with open(cache, "r+b") as f:
        f.truncate(1000)
    rebuilt = input_pipeline._load_tfds_arrays(None)
    for key, value in cached.items():
        np.testing.assert_array_equal(rebuilt[key], value)
    assert os.path.getsize(cache) > 50_000_000


def test_idx_reader_without_tfds_gives_tfds_arrays_and_splits(splits, monkeypatch):
    if not os.path.isdir(input_pipeline.DEBIAN_DIR):
        pytest.skip("dataset-fashion-mnist is not installed")
    direct = input_pipeline.load_idx_arrays(input_pipeline.DEBIAN_DIR)
    via_tfds = input_pipeline._load_tfds_arrays(None)
    assert direct.keys() == via_tfds.keys()
    for key, value in via_tfds.items():
        assert direct[key].dtype == value.dtype, key
        np.testing.assert_array_equal(direct[key], value, err_msg=key)
    # With tfds "uninstalled", load_splits takes the IDX path and carves the same splits.
    monkeypatch.setattr(input_pipeline, "have_tfds", lambda: False)
    monkeypatch.setenv(input_pipeline.IDX_DIR_ENV, input_pipeline.DEBIAN_DIR)
    for name, split in input_pipeline.load_splits(validation_fraction=0.1, split_seed=0).items():
        np.testing.assert_array_equal(split.index, splits[name].index)
        np.testing.assert_array_equal(split.images, splits[name].images)
        np.testing.assert_array_equal(split.labels, splits[name].labels)


def test_idx_reader_refuses_missing_or_altered_files(tmp_path):
    if not os.path.isdir(input_pipeline.DEBIAN_DIR):
        pytest.skip("dataset-fashion-mnist is not installed")
    with pytest.raises(input_pipeline.DatasetNotFoundError, match="FMNIST_JAX_IDX_DIR"):
        input_pipeline.load_idx_arrays(str(tmp_path))
    for name in input_pipeline.IDX_FILES:
        with open(os.path.join(input_pipeline.DEBIAN_DIR, name), "rb") as f:
            data = f.read()
        if name == "t10k-labels-idx1-ubyte.gz":  # One flipped byte in the compressed body.
            data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
        (tmp_path / name).write_bytes(data)
    with pytest.raises(input_pipeline.DatasetNotFoundError, match=r"t10k-labels-idx1-ubyte\.gz: sha256"):
        input_pipeline.load_idx_arrays(str(tmp_path))
