"""The input pipeline on the real prepared Fashion-MNIST."""

import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fmnist_jax import input_pipeline, steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    scaled = np.asarray(steps.preprocess(images, normalize=True))
    raw = np.asarray(steps.preprocess(images, normalize=False))
    assert scaled.dtype == raw.dtype == np.float32
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    assert raw.min() == 0.0 and raw.max() == 255.0
    np.testing.assert_allclose(scaled * 255.0, raw, rtol=1e-6)


def test_train_and_validation_are_disjoint_and_cover_train(splits):
    train_idx, val_idx = splits["train"].index, splits["validation"].index
    assert np.intersect1d(train_idx, val_idx).size == 0
    np.testing.assert_array_equal(np.union1d(train_idx, val_idx), np.arange(60_000))
    # The examples are the ones the indices name (disjoint and covering as data, not
    # only as indices), and test is tfds's test split whole and in order.
    arrays = input_pipeline.load_arrays()
    for name in ("train", "validation"):
        split = splits[name]
        np.testing.assert_array_equal(split.images, arrays["train_images"][split.index], err_msg=name)
        np.testing.assert_array_equal(split.labels, arrays["train_labels"][split.index], err_msg=name)
    np.testing.assert_array_equal(splits["test"].index, np.arange(10_000))
    np.testing.assert_array_equal(splits["test"].images, arrays["test_images"])
    np.testing.assert_array_equal(splits["test"].labels, arrays["test_labels"])


def test_validation_fraction_and_seed():
    a_train, a_val = input_pipeline.carve_validation(60_000, 0.2, seed=42)
    b_train, b_val = input_pipeline.carve_validation(60_000, 0.2, seed=42)
    _, c_val = input_pipeline.carve_validation(60_000, 0.2, seed=43)
    assert (len(a_train), len(a_val)) == (48_000, 12_000)
    # round(60_000 * fraction) validation examples: 6_000, 12_000, 19_999.8 -> 20_000, 150.
    for fraction, num_val in ((0.1, 6_000), (0.2, 12_000), (0.33333, 20_000), (0.0025, 150)):
        train_idx, val_idx = input_pipeline.carve_validation(60_000, fraction, seed=0)
        assert (len(train_idx), len(val_idx)) == (60_000 - num_val, num_val), fraction
        assert input_pipeline.num_train_examples(fraction) == 60_000 - num_val
        np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.arange(60_000))
    np.testing.assert_array_equal(a_val, b_val)
    np.testing.assert_array_equal(a_train, b_train)
    assert not np.array_equal(a_val, c_val)
    # load_splits carves with the fraction and seed it is given.
    splits = input_pipeline.load_splits(validation_fraction=0.2, split_seed=42)
    np.testing.assert_array_equal(splits["validation"].index, a_val)
    np.testing.assert_array_equal(splits["train"].index, a_train)


def test_same_seed_same_order(splits):
    split = splits["train"]

    def one_epoch(seed, epoch, batch_size=1000, start_step=0):
        batches = list(input_pipeline.train_batches(split, batch_size, seed, epoch, start_step))
        return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]), len(batches)

    images, labels, num_batches = one_epoch(7, 1)
    again = one_epoch(7, 1)
    assert num_batches == 54
    np.testing.assert_array_equal(images, again[0])
    np.testing.assert_array_equal(labels, again[1])
    assert not np.array_equal(labels, one_epoch(7, 2)[1])
    assert not np.array_equal(labels, one_epoch(8, 1)[1])
    assert not np.array_equal(labels, split.labels)  # Shuffled, not the split's own order.
    # The order is epoch_order's (what the scanned training path gathers) ...
    order = input_pipeline.epoch_order(len(split), 7, 1)
    np.testing.assert_array_equal(np.sort(order), np.arange(len(split)))
    np.testing.assert_array_equal(images, split.images[order])
    np.testing.assert_array_equal(labels, split.labels[order])
    # ... and an epoch is a permutation of (image, label) pairs: per class, the same
    # examples (a sum of their pixels, which does not depend on the order).
    for c in range(10):
        np.testing.assert_array_equal(
            images[labels == c].sum(axis=0, dtype=np.int64),
            split.images[split.labels == c].sum(axis=0, dtype=np.int64),
            err_msg=f"class {c}",
        )
    # Resuming at batch 50 gives the epoch's last four batches.
    tail = one_epoch(7, 1, start_step=50)
    assert tail[2] == 4
    np.testing.assert_array_equal(tail[0], images[50_000:])
    np.testing.assert_array_equal(tail[1], labels[50_000:])
    # A batch size that does not divide 54,000: only full batches, the rest dropped.
    batches = list(input_pipeline.train_batches(split, 1024, seed=7, epoch=1))
    assert len(batches) == 54_000 // 1024 == 52
    assert {(len(x), len(y)) for x, y in batches} == {(1024, 1024)}
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), split.labels[order[: 52 * 1024]])


def test_eval_batches_cover_every_example_once(splits):
    split = splits["validation"]
    images, labels, masks = zip(*input_pipeline.eval_batches(split, 700), strict=True)
    assert len(masks) == 9
    assert {len(x) for x in images} == {len(y) for y in labels} == {len(m) for m in masks} == {700}
    # 6,000 = 8 x 700 + 400: every example once and in order, then 300 masked zeros.
    mask = np.concatenate(masks)
    assert mask.dtype == np.float32
    np.testing.assert_array_equal(mask, np.r_[np.ones(6_000), np.zeros(300)])
    np.testing.assert_array_equal(np.concatenate(labels)[:6_000], split.labels)
    np.testing.assert_array_equal(np.concatenate(images)[:6_000], split.images)
    assert not np.concatenate(images)[6_000:].any() and not np.concatenate(labels)[6_000:].any()


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


def test_numpy_cache_equals_tfds_and_is_rebuilt_when_damaged(splits, tmp_path):
    # On a copy of the prepared dataset: runs in other test processes read the shared cache.
    prepared = input_pipeline._builder(None).data_dir  # <data_dir>/fashion_mnist/<version>
    version = os.path.basename(prepared)
    shutil.copytree(prepared, tmp_path / "fashion_mnist" / version)
    data_dir = str(tmp_path)
    cached = input_pipeline._load_tfds_arrays(data_dir)
    images, labels = input_pipeline._load_tfds_split("test", data_dir)
    np.testing.assert_array_equal(cached["test_images"], images)
    np.testing.assert_array_equal(cached["test_labels"], labels)
    np.testing.assert_array_equal(cached["test_images"], splits["test"].images)
    cache = os.path.join(input_pipeline._builder(data_dir).data_dir, "numpy_cache.npz")
    assert cache.startswith(data_dir)
    with open(cache, "r+b") as f:
        f.truncate(1000)
    rebuilt = input_pipeline._load_tfds_arrays(data_dir)
    for key, value in cached.items():
        np.testing.assert_array_equal(rebuilt[key], value)
    assert os.path.getsize(cache) > 50_000_000


def test_idx_reader_without_tfds_gives_tfds_arrays_and_splits(splits, monkeypatch, tmp_path):
    if not os.path.isdir(input_pipeline.DEBIAN_DIR):
        pytest.skip("dataset-fashion-mnist is not installed")
    direct = input_pipeline.load_idx_arrays(input_pipeline.DEBIAN_DIR)
    via_tfds = input_pipeline._load_tfds_arrays(None)
    assert direct.keys() == via_tfds.keys()
    for key, value in via_tfds.items():
        assert direct[key].dtype == value.dtype, key
        np.testing.assert_array_equal(direct[key], value, err_msg=key)
    # With tfds "uninstalled", load_splits reads the IDX files from $FMNIST_JAX_IDX_DIR
    # (not tfds, not the Debian folder) and carves the same splits.
    for name in input_pipeline.IDX_FILES:
        (tmp_path / name).symlink_to(os.path.join(input_pipeline.DEBIAN_DIR, name))
    monkeypatch.setattr(input_pipeline, "have_tfds", lambda: False)
    monkeypatch.setattr(input_pipeline, "DEBIAN_DIR", str(tmp_path / "absent"))
    monkeypatch.setattr(input_pipeline, "_builder", lambda *_: pytest.fail("tfds was used"))
    monkeypatch.setenv(input_pipeline.IDX_DIR_ENV, str(tmp_path))
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


def test_importing_train_imports_tfds_before_any_thread_compiles():
    """For a while, tfds's import swaps builtins.__import__ in every thread. When
    train.set_up's data loading imported it, the compiling thread's imports got lazy
    stand-ins that failed: about one launch in two with another process busy."""
    code = "import sys, fmnist_jax.train; print('tensorflow_datasets' in sys.modules)"
    ran = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert ran.stdout.split() == ["True"]
