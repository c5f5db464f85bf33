"""Shared fixtures: tiny synthetic IDX datasets, and the real MNIST where it is present."""

from __future__ import annotations

import atexit
import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Tests never touch the user's ~/.keras, and Keras must not pick another backend.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Nor the user's cache (JAX's compiled steps, ONNX Runtime Web): one of their own, shared
# by every test in the session.
os.environ["MNIST_SEQ_CACHE"] = tempfile.mkdtemp(prefix="mnist-seq-cache-")
atexit.register(shutil.rmtree, os.environ["MNIST_SEQ_CACHE"], True)

REPO = Path(__file__).resolve().parent.parent
REAL_DATA = Path(
    os.environ.get("MNIST_SEQ_DATA", REPO.parent / "shared" / "data" / "mnist")
).resolve()
IMAGE_NAMES = ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")
LABEL_NAMES = ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte")


def write_idx(path: Path, array: np.ndarray, magic: int | None = None, gz: bool = True) -> Path:
    """Write a uint8 array in IDX layout (header: magic, then one big-endian size per dim)."""
    array = np.asarray(array, dtype=np.uint8)
    magic = 0x0800 + array.ndim if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw = header + array.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def make_synthetic(folder: Path, n_train: int = 120, n_test: int = 40, gz: bool = True,
                   seed: int = 0) -> Path:
    """Four IDX files of random 28x28 'digits' whose label is drawn as a bright band,
    so a model can learn something from them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for img_name, lbl_name, n in zip(IMAGE_NAMES, LABEL_NAMES, (n_train, n_test), strict=True):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 * label: 2 * label + 3, :] = 255
        suffix = ".gz" if gz else ""
        write_idx(folder / (img_name + suffix), images, gz=gz)
        write_idx(folder / (lbl_name + suffix), labels, gz=gz)
    return folder


@pytest.fixture
def synthetic_dir(tmp_path: Path) -> Path:
    return make_synthetic(tmp_path / "synthetic")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """Real MNIST where it is present (CI, this repo's machine), else synthetic IDX files."""
    if (REAL_DATA / "train-images-idx3-ubyte.gz").is_file():
        return REAL_DATA
    return make_synthetic(tmp_path_factory.mktemp("data"), n_train=600, n_test=200)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No test reads the developer's MNIST_SEQ_DATA or Keras cache by accident."""
    monkeypatch.delenv("MNIST_SEQ_DATA", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))


@pytest.fixture
def small_disk(tmp_path):
    """A 32 MB file system of its own (tmpfs) to fill up: root only, skipped elsewhere."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)],
            capture_output=True).returncode:
        pytest.skip("filling a disk needs root, to mount a small tmpfs")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk: Path) -> Path:
    """Write a file until `disk` is full, to the last byte; delete it to make room."""
    ballast = disk / "ballast"
    with open(ballast, "wb", buffering=0) as f:
        for size in (2**20, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                continue
    return ballast


def assert_whole(folder: Path) -> None:
    """Every file under `folder` is complete under its final name: no temporary files
    left, and each JSON, YAML, HDF5, .keras (zip) and PNG file reads."""
    import zipfile

    import h5py
    import yaml
    from PIL import Image

    assert not list(folder.rglob(".*tmp*")), list(folder.rglob(".*tmp*"))
    for path in folder.rglob("*"):
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".yaml":
            yaml.safe_load(path.read_text())
        elif path.suffix == ".h5":
            h5py.File(path, "r").close()
        elif path.suffix == ".keras":
            assert zipfile.ZipFile(path).testzip() is None, path
        elif path.suffix == ".png":
            Image.open(path).verify()
