"""MNIST data: the four IDX files (raw or .gz) or Keras's mnist.npz, validated.

Where the data comes from, first match wins: `--data-dir`, the environment
variable MNIST_SEQ_DATA, the config's `data.dir`, then the Keras cache
(`$KERAS_HOME/datasets/mnist.npz`, downloading it if needed).
Any dataset in MNIST's IDX layout (Fashion-MNIST, KMNIST) loads too; a checksum
that is not the original MNIST's is reported as a note, not an error.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mnist_seq.errors import DataError, first_line

ENV_VAR = "MNIST_SEQ_DATA"
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801

# File stems of the original distribution, and the md5 of their decompressed bytes.
IDX_FILES = {
    "train_images": ("train-images-idx3-ubyte", "6bbc9ace898e44ae57da46a324031adb"),
    "train_labels": ("train-labels-idx1-ubyte", "a25bea736e30d166cdddb491f175f624"),
    "test_images": ("t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea"),
    "test_labels": ("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637"),
}
HOW_TO_POINT = (
    "Point mnist-seq at a folder holding the four IDX files "
    "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
    f"t10k-labels-idx1-ubyte.gz) or mnist.npz: use --data-dir DIR or export {ENV_VAR}=DIR"
)


@dataclass
class Dataset:
    """Train and test splits as uint8 images (N, 28, 28) and integer labels (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    notes: list[str] = field(default_factory=list)


def load_mnist(data_dir: str | Path | None = None, config_dir: str | Path | None = None) -> Dataset:
    """Load MNIST from the first source given (flag, env, config), else the Keras cache."""
    return find_mnist(data_dir, config_dir)()


def find_mnist(data_dir: str | Path | None = None,
               config_dir: str | Path | None = None) -> Callable[[], Dataset]:
    """The reader of the source `load_mnist` would use, found without reading a file: a
    path that does not exist or holds no MNIST files raises DataError at once."""
    for origin, value in (("--data-dir", data_dir), (ENV_VAR, os.environ.get(ENV_VAR)),
                          ("data.dir", config_dir)):
        if value:
            return _find_path(Path(value).expanduser(), origin)
    return load_keras_cache


def load_path(path: Path, origin: str = "path") -> Dataset:
    """Load a folder of IDX files (or one with mnist.npz), or an .npz file."""
    return _find_path(path, origin)()


def _find_path(path: Path, origin: str) -> Callable[[], Dataset]:
    if not path.exists():
        raise DataError(f"data path from {origin} does not exist: {path}. {HOW_TO_POINT}")
    if path.is_file():
        return functools.partial(load_npz, path)
    found = {key: _find_idx(path, stem) for key, (stem, _) in IDX_FILES.items()}
    if all(found.values()):
        return functools.partial(load_idx_dir, path, found)
    if (path / "mnist.npz").is_file():
        return functools.partial(load_npz, path / "mnist.npz")
    if any(found.values()):
        missing = [IDX_FILES[k][0] + "[.gz]" for k, p in found.items() if p is None]
        raise DataError(f"incomplete MNIST folder {path}: missing {', '.join(missing)}")
    raise DataError(f"no MNIST files in {path} (from {origin}). {HOW_TO_POINT}")


def _find_idx(folder: Path, stem: str) -> Path | None:
    # Some mirrors spell the files with a dot: train-images.idx3-ubyte.
    for name in (stem, stem.replace("-idx", ".idx")):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def load_idx_dir(folder: Path, files: dict[str, Path]) -> Dataset:
    """Read and cross-check the four IDX files."""
    arrays, notes, original = {}, [], True
    for key, path in files.items():
        is_images = key.endswith("images")
        arrays[key], digest = read_idx(path, IMAGE_MAGIC if is_images else LABEL_MAGIC)
        original &= digest == IDX_FILES[key][1]
    if not original:
        notes.append(f"checksums in {folder} are not the original MNIST's "
                     "(Fashion-MNIST, KMNIST or another IDX dataset?); using the files as they are")
    ds = Dataset(arrays["train_images"], arrays["train_labels"], arrays["test_images"],
                 arrays["test_labels"], source=str(folder), notes=notes)
    check_dataset(ds)
    return ds


def read_idx(path: Path, magic: int) -> tuple[np.ndarray, str]:
    """Read one IDX file (raw or gzip) of uint8 data; return the array and its md5."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt or truncated gzip file ({e})") from None
    what = "images, 3 dims" if magic == IMAGE_MAGIC else "labels, 1 dim"
    if len(raw) < 4:
        raise DataError(f"{path}: truncated, {len(raw)} bytes, too short for an IDX header")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise DataError(f"{path}: wrong magic number 0x{got:08x}, expected 0x{magic:08x} "
                        f"(uint8 {what}); is this an MNIST IDX file?")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated inside the IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims))
    body = len(raw) - header
    if body != expected:
        state = "truncated" if body < expected else "has trailing bytes"
        raise DataError(f"{path}: {state}: header says {'x'.join(map(str, dims))} = "
                        f"{expected} bytes of data, file holds {body}")
    array = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
    return array, hashlib.md5(raw).hexdigest()


def load_npz(path: Path) -> Dataset:
    """Read Keras's mnist.npz (x_train, y_train, x_test, y_test), never unpickling."""
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise DataError(f"{path}: not an MNIST .npz, missing arrays {', '.join(missing)} "
                                f"(expected {', '.join(keys)})")
            arrays = [f[k] for k in keys]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a readable .npz file ({e.__class__.__name__}: {e})") from None
    except Exception as e:  # zipfile.BadZipFile and friends from a corrupt archive
        raise DataError(f"{path}: corrupt .npz file ({e.__class__.__name__}: {e})") from None
    ds = Dataset(*arrays, source=str(path))
    check_dataset(ds)
    return ds


def check_dataset(ds: Dataset) -> None:
    """Image and label counts agree, images are 28x28, labels are classes 0..9."""
    for split in ("train", "test"):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
            raise DataError(f"{ds.source}: {split} images have shape {x.shape}, "
                            f"expected (N, 28, 28)")
        if y.ndim != 1:
            raise DataError(f"{ds.source}: {split} labels have shape {y.shape}, expected (N,)")
        if len(x) != len(y):
            raise DataError(f"{ds.source}: {len(x)} {split} images but {len(y)} {split} labels")
        if len(x) == 0:
            raise DataError(f"{ds.source}: the {split} set is empty")
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= NUM_CLASSES:
            raise DataError(f"{ds.source}: {split} labels range over {y.min()}..{y.max()}, "
                            f"expected integers 0..{NUM_CLASSES - 1}")


def needs_download(data_dir: str | Path | None = None,
                   config_dir: str | Path | None = None) -> bool:
    """Whether `load_mnist` would download MNIST through Keras (no source given, no cache)."""
    given = data_dir or os.environ.get(ENV_VAR) or config_dir
    return not given and not keras_cache_path().is_file()


def keras_cache_path() -> Path:
    """Where Keras keeps (and downloads) mnist.npz."""
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser()
    return home / "datasets" / "mnist.npz"


def load_keras_cache() -> Dataset:
    """Load the Keras cache directly, or let Keras download it; explain how to fix a failure."""
    cache = keras_cache_path()
    if cache.is_file():
        # Read it ourselves: keras.datasets would delete a file whose hash it dislikes.
        return load_npz(cache)
    try:
        import keras

        keras.datasets.mnist.load_data()
    except Exception as e:  # no network, proxy, disk: all end the same way for the user
        raise DataError(f"MNIST not found: no --data-dir, {ENV_VAR} or data.dir was given, "
                        f"there is no Keras cache at {cache}, and downloading it failed "
                        f"({first_line(e)}). {HOW_TO_POINT}") from None
    return load_npz(keras_cache_path())


def split_train_val(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int, max_samples: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out a seeded random validation fraction of the training set.

    With `max_samples`, first draw that many samples at random (a slice for smoke runs).
    """
    order = np.random.default_rng(seed).permutation(len(x))
    if max_samples:
        order = order[:max_samples]
    n_val = max(1, round(len(order) * fraction))
    if n_val >= len(order):
        raise DataError(f"{len(order)} training samples are too few to hold out "
                        f"a validation fraction of {fraction}")
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def to_float(x: np.ndarray) -> np.ndarray:
    """uint8 pixels to float32 in [0, 1], the models' input."""
    # In place: one new array instead of two, and the first touch of new memory is
    # what costs (0.05 s against 0.07-0.76 s for 57,000 images here).
    out = x.astype(np.float32)
    return np.divide(out, 255.0, out=out)
