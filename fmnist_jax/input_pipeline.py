"""Fashion-MNIST through tensorflow-datasets, held in memory as uint8 numpy arrays.

The dataset comes from tfds's own `fashion_mnist` builder. Offline, it is prepared
from the four IDX files of the Debian package `dataset-fashion-mnist`: Debian
rewrote their 10-byte gzip headers, so the upstream headers are restored before
tfds checks size and sha256 against its registered checksums.

Run `python -m fmnist_jax.input_pipeline [--data_dir=DIR]` to prepare it ahead
of training.

Where tensorflow-datasets is not installed (an accelerator image without
TensorFlow, say), the same four IDX files are read directly from
$FMNIST_JAX_IDX_DIR (default: the Debian package's folder): their upstream bytes
are checked against tfds's registered sha256 sums and the examples put in the
order tfds gives them, so splits, seeds and results are the same either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import importlib.util
import os
import struct
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np

# Imported with this module, at start-up, never later beside another thread: for a while,
# tfds's import swaps builtins.__import__ for etils' lazy one in every thread, and an import
# elsewhere meanwhile (jax's, in train.set_up's compiling thread) gets a lazy stand-in that
# fails at its first use. Where it is not installed, the IDX files are read directly.
with contextlib.suppress(ImportError):
    import tensorflow_datasets  # noqa: F401

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# Upstream gzip modification times (the header Debian rewrote).
_UPSTREAM_MTIME = {"train": 1504176606, "t10k": 1504176627}
# sha256 of the upstream files, as tfds registers them (url_checksums/fashion_mnist.txt).
UPSTREAM_SHA256 = {
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
IDX_DIR_ENV = "FMNIST_JAX_IDX_DIR"
IMAGE_SHAPE = (28, 28, 1)
NUM_TRAIN = 60_000
NUM_TEST = 10_000
HOW_TO_GET = (
    "Fashion-MNIST is not prepared and could not be prepared here. Either\n"
    "  * install the Debian package:  sudo apt-get install dataset-fashion-mnist\n"
    "    (then `make data` or `python -m fmnist_jax.input_pipeline` prepares it), or\n"
    "  * give this machine internet access so tensorflow-datasets can download it."
)


class DatasetNotFoundError(RuntimeError):
    """Fashion-MNIST is neither prepared nor preparable on this machine."""


@dataclasses.dataclass(frozen=True)
class Split:
    """One split in memory: images (N, 28, 28, 1) uint8, labels (N,) int32.

    `index` holds each example's position in tfds's `train` (or `test`) split, so
    that disjointness and provenance of carved splits can be checked.
    """

    images: np.ndarray
    labels: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def upstream_gzip_bytes(src: str) -> bytes:
    """A Debian-shipped IDX .gz with its upstream gzip header restored.

    Debian dropped the FNAME field and changed mtime; the compressed body and
    CRC are untouched, so restoring the header reproduces the upstream bytes.
    """
    name = os.path.basename(src)
    with open(src, "rb") as f:
        data = f.read()
    if data[:3] != b"\x1f\x8b\x08":
        raise ValueError(f"{src} is not a gzip file")
    flags = data[3]
    if flags & 0x08:  # FNAME already present: nothing to restore.
        return data
    if flags != 0:
        raise ValueError(f"{src}: unexpected gzip flags {flags:#x}")
    mtime = _UPSTREAM_MTIME[name.split("-")[0]]
    header = b"\x1f\x8b\x08\x08" + struct.pack("<I", mtime) + data[8:10]
    return header + name[: -len(".gz")].encode() + b"\0" + data[10:]


def restore_upstream_gzip(src: str, dst: str) -> None:
    """Copies a Debian-shipped IDX .gz to `dst` with its upstream gzip header."""
    data = upstream_gzip_bytes(src)
    with open(dst, "wb") as f:
        f.write(data)


def installed(module: str) -> bool:
    """Whether `module` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def have_tfds() -> bool:
    """Whether tensorflow-datasets can be imported here."""
    return installed("tensorflow_datasets")


def tfds_order(num_examples: int, split: str) -> np.ndarray:
    """The order in which tfds stores the examples of an IDX file in `split`.

    tfds's writer sorts examples by the md5 of the split name followed by the
    example's key, and fashion_mnist's keys are the positions in the file.
    """
    salted = hashlib.md5(split.encode())

    def key(i: int) -> bytes:
        md5 = salted.copy()
        md5.update(str(i).encode())
        return md5.digest()  # Big-endian bytes sort like tfds's 128-bit integers.

    return np.array(sorted(range(num_examples), key=key), np.int64)


def _read_idx(path: str, magic: int, shape: tuple[int, ...]) -> np.ndarray:
    name = os.path.basename(path)
    data = upstream_gzip_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    if digest != UPSTREAM_SHA256[name]:
        raise DatasetNotFoundError(
            f"{path}: sha256 {digest} is not the upstream file's ({UPSTREAM_SHA256[name]})"
        )
    raw = gzip.decompress(data)
    dims = len(shape)
    header = struct.unpack(f">{1 + dims}I", raw[: 4 * (1 + dims)])
    if header != (magic, *shape):
        raise DatasetNotFoundError(f"{path}: IDX header {header}, expected {(magic, *shape)}")
    return np.frombuffer(raw, np.uint8, offset=4 * (1 + dims)).reshape(shape)


def load_idx_arrays(idx_dir: str | None = None) -> dict[str, np.ndarray]:
    """The train and test splits read from the four IDX files, without TF or tfds.

    Same arrays, in the same order, as tfds's fashion_mnist gives (a test checks).
    """
    idx_dir = idx_dir or os.environ.get(IDX_DIR_ENV) or DEBIAN_DIR
    missing = [f for f in IDX_FILES if not os.path.isfile(os.path.join(idx_dir, f))]
    if missing:
        raise DatasetNotFoundError(
            f"tensorflow-datasets is not installed and {idx_dir} lacks {', '.join(missing)}.\n"
            f"Install tensorflow-datasets, or point ${IDX_DIR_ENV} at a folder with the four IDX .gz files.\n"
            + HOW_TO_GET
        )
    arrays = {}
    for split, prefix, n in (("train", "train", NUM_TRAIN), ("test", "t10k", NUM_TEST)):
        images = _read_idx(os.path.join(idx_dir, f"{prefix}-images-idx3-ubyte.gz"), 2051, (n, 28, 28))
        labels = _read_idx(os.path.join(idx_dir, f"{prefix}-labels-idx1-ubyte.gz"), 2049, (n,))
        order = tfds_order(n, split)
        arrays[f"{split}_images"] = images[order][..., None]
        arrays[f"{split}_labels"] = labels[order].astype(np.int32)
    return arrays


def _builder(data_dir: str | None) -> Any:
    import tensorflow_datasets as tfds

    return tfds.builder("fashion_mnist", data_dir=data_dir)


def is_prepared(data_dir: str | None = None) -> bool:
    """Whether tfds's fashion_mnist is already prepared in `data_dir`."""
    return bool(_builder(data_dir).is_prepared())


def prepare(data_dir: str | None = None, debian_dir: str = DEBIAN_DIR) -> str:
    """Prepares Fashion-MNIST with tfds if needed; returns where it lives.

    Uses the Debian IDX files when they are installed (no network needed),
    otherwise lets tfds download. Raises DatasetNotFoundError if neither works.
    """
    import tensorflow_datasets as tfds

    builder = _builder(data_dir)
    if builder.is_prepared():
        return str(builder.data_dir)
    if all(os.path.exists(os.path.join(debian_dir, f)) for f in IDX_FILES):
        print(f"Preparing Fashion-MNIST with tfds from {debian_dir} ...", file=sys.stderr)
        with tempfile.TemporaryDirectory() as manual_dir:
            for f in IDX_FILES:
                restore_upstream_gzip(os.path.join(debian_dir, f), os.path.join(manual_dir, f))
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
            )
    else:
        print("Downloading Fashion-MNIST with tfds ...", file=sys.stderr)
        try:
            builder.download_and_prepare()
        except Exception as e:  # Any network or checksum failure: say how to fix it.
            raise DatasetNotFoundError(f"{HOW_TO_GET}\n(tfds said: {e})") from e
    return str(builder.data_dir)


def _load_tfds_split(split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds

    ds = tfds.as_numpy(
        tfds.load("fashion_mnist", split=split, data_dir=data_dir, batch_size=-1, download=False)
    )
    return np.asarray(ds["image"], np.uint8), np.asarray(ds["label"], np.int32)


def _load_tfds_arrays(data_dir: str | None) -> dict[str, np.ndarray]:
    """tfds's train and test splits as uint8/int32 arrays, cached beside the prepared data.

    Decoding the tfrecords needs TensorFlow (several seconds); the cache
    (`numpy_cache.npz` in tfds's versioned dataset directory) is read back in
    well under a second. It is written atomically and rebuilt if unreadable.
    """
    cache = os.path.join(_builder(data_dir).data_dir, "numpy_cache.npz")
    keys = ("train_images", "train_labels", "test_images", "test_labels")
    try:
        with np.load(cache) as f:
            arrays = {k: f[k] for k in keys}
        if len(arrays["train_labels"]) == NUM_TRAIN and len(arrays["test_labels"]) == NUM_TEST:
            return arrays
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        pass
    arrays = {}
    arrays["train_images"], arrays["train_labels"] = _load_tfds_split("train", data_dir)
    arrays["test_images"], arrays["test_labels"] = _load_tfds_split("test", data_dir)
    try:
        tmp = f"{cache}.{os.getpid()}.tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, cache)
    except OSError:  # A read-only data_dir still works, only slower.
        pass
    return arrays


def load_arrays(data_dir: str | None = None, prepare_if_missing: bool = True) -> dict[str, np.ndarray]:
    """tfds's whole train and test splits (train_images, train_labels, test_images,
    test_labels), preparing the dataset first if needed (and allowed); read from the
    IDX files directly where tfds is not installed."""
    if not have_tfds():
        return load_idx_arrays()
    if not is_prepared(data_dir):
        if not prepare_if_missing:
            raise DatasetNotFoundError(HOW_TO_GET)
        prepare(data_dir)
    return _load_tfds_arrays(data_dir)


def num_train_examples(validation_fraction: float) -> int:
    """How many training examples remain after carving validation (no data needed)."""
    return NUM_TRAIN - round(NUM_TRAIN * validation_fraction)


def carve_validation(
    num_examples: int, validation_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of range(num_examples) into (train_index, validation_index)."""
    num_val = round(num_examples * validation_fraction)
    if not 0 < num_val < num_examples:
        raise ValueError(
            f"validation_fraction={validation_fraction} leaves {num_val} of "
            f"{num_examples} examples for validation"
        )
    perm = np.random.default_rng(seed).permutation(num_examples)
    return np.sort(perm[num_val:]), np.sort(perm[:num_val])


def load_splits(
    data_dir: str | None = None,
    validation_fraction: float = 0.1,
    split_seed: int = 0,
    prepare_if_missing: bool = True,
) -> dict[str, Split]:
    """Loads train, validation and test into memory (each once), uint8.

    Validation is carved from tfds's train split with a seeded permutation;
    test is tfds's test split, untouched.
    """
    arrays = load_arrays(data_dir, prepare_if_missing)
    train_images, train_labels = arrays["train_images"], arrays["train_labels"]
    test_images, test_labels = arrays["test_images"], arrays["test_labels"]
    train_idx, val_idx = carve_validation(len(train_labels), validation_fraction, split_seed)
    return {
        "train": Split(train_images[train_idx], train_labels[train_idx], train_idx),
        "validation": Split(train_images[val_idx], train_labels[val_idx], val_idx),
        "test": Split(test_images, test_labels, np.arange(len(test_labels))),
    }


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The seeded permutation of training examples for one epoch."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def epoch_batch_indices(num_examples: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """One epoch's batches as rows of an int32 (steps, batch_size) array: the seeded
    order of `epoch_order`, cut into full batches (the last partial one dropped)."""
    steps = num_examples // batch_size
    order = epoch_order(num_examples, seed, epoch)
    return order[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def train_batches(
    split: Split, batch_size: int, seed: int, epoch: int, start_step: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Shuffled full batches of one epoch, from batch `start_step` on (to resume
    mid-epoch); the last partial batch is dropped."""
    for idx in epoch_batch_indices(len(split), batch_size, seed, epoch)[start_step:]:
        yield split.images[idx], split.labels[idx]


def eval_batches(split: Split, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Batches in order covering every example once; the last is zero-padded.

    Yields (images, labels, mask) where mask is 1.0 for real examples.
    """
    n = len(split)
    for start in range(0, n, batch_size):
        images = split.images[start : start + batch_size]
        labels = split.labels[start : start + batch_size]
        mask = np.ones(len(labels), np.float32)
        pad = batch_size - len(labels)
        if pad:
            images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
            labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
            mask = np.concatenate([mask, np.zeros(pad, np.float32)])
        yield images, labels, mask


def main(argv: list[str] | None = None) -> int:
    """Command line: prepare the dataset (into --data_dir, default tfds's own)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=None)
    args = parser.parse_args(argv)
    try:
        where = prepare(args.data_dir)
    except DatasetNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Fashion-MNIST is prepared in {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
