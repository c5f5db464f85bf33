"""The data loader: IDX and npz, validation errors, source order, splits."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from conftest import REAL_DATA, make_synthetic, write_idx

from mnist_seq.data import load_mnist, load_path, split_train_val, to_float
from mnist_seq.errors import DataError

real = pytest.mark.skipif(not (REAL_DATA / "train-images-idx3-ubyte.gz").is_file(),
                          reason="real MNIST not present")


@real
@pytest.mark.real_data
def test_real_mnist_counts_and_checksums():
    ds = load_mnist(REAL_DATA)
    assert ds.x_train.shape == (60000, 28, 28) and ds.x_test.shape == (10000, 28, 28)
    assert ds.x_train.dtype == np.uint8
    assert np.bincount(ds.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918,
                                                6265, 5851, 5949]
    assert np.bincount(ds.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028,
                                               974, 1009]
    assert ds.notes == []  # checksums are the original MNIST's


@pytest.mark.parametrize("gz", [True, False])
def test_synthetic_idx_loads_and_is_flagged_as_not_mnist(tmp_path, gz):
    folder = make_synthetic(tmp_path / "d", n_train=30, n_test=10, gz=gz)
    ds = load_mnist(folder)
    assert ds.x_train.shape == (30, 28, 28) and ds.y_test.shape == (10,)
    assert len(ds.notes) == 1 and "not the original MNIST" in ds.notes[0]


def test_npz_loads(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 255, (20, 28, 28), dtype=np.uint8),
              "y_train": rng.integers(0, 10, 20).astype(np.uint8),
              "x_test": rng.integers(0, 255, (5, 28, 28), dtype=np.uint8),
              "y_test": rng.integers(0, 10, 5).astype(np.uint8)}
    np.savez(tmp_path / "mnist.npz", **arrays)
    for path in (tmp_path, tmp_path / "mnist.npz"):  # a folder holding it, or the file
        ds = load_mnist(path)
        assert np.array_equal(ds.x_train, arrays["x_train"])
        assert np.array_equal(ds.y_test, arrays["y_test"])


def test_npz_with_pickled_objects_is_refused(tmp_path):
    objs = np.array([{"a": 1}], dtype=object)
    np.savez(tmp_path / "mnist.npz", x_train=objs, y_train=objs, x_test=objs, y_test=objs)
    with pytest.raises(DataError, match="not a readable .npz"):
        load_mnist(tmp_path / "mnist.npz")


def _break(folder, name, data: bytes):
    (folder / name).write_bytes(data)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / "train-images-idx3-ubyte.gz").unlink(), "missing train-images"),
        (lambda f: _break(f, "train-images-idx3-ubyte.gz",
                          (f / "train-images-idx3-ubyte.gz").read_bytes()[:200]),
         "corrupt or truncated gzip"),
        (lambda f: _break(f, "train-labels-idx1-ubyte.gz", b"\x1f\x8bnot really gzip"),
         "corrupt or truncated gzip"),
        (lambda f: _break(f, "train-images-idx3-ubyte.gz",
                          gzip.compress(gzip.decompress(
                              (f / "train-images-idx3-ubyte.gz").read_bytes())[:-100])),
         "truncated: header says 30x28x28"),
        (lambda f: _break(f, "t10k-labels-idx1-ubyte.gz", gzip.compress(b"\x00\x00")),
         "too short for an IDX header"),
        (lambda f: write_idx(f / "train-images-idx3-ubyte.gz", np.zeros(30), magic=0x0801),
         "wrong magic number 0x00000801, expected 0x00000803"),
        (lambda f: write_idx(f / "train-labels-idx1-ubyte.gz", np.zeros(29)),
         "30 train images but 29 train labels"),
        (lambda f: write_idx(f / "t10k-labels-idx1-ubyte.gz", np.full(10, 10)),
         r"test labels range over 10..10, expected integers 0..9"),
        (lambda f: write_idx(f / "t10k-images-idx3-ubyte.gz", np.zeros((10, 32, 32))),
         r"shape \(10, 32, 32\), expected \(N, 28, 28\)"),
    ],
    ids=["missing-file", "truncated-gz", "corrupt-gz", "truncated-idx", "short-header",
         "wrong-magic", "count-mismatch", "label-range", "wrong-size"],
)
def test_bad_files_raise_clear_errors(tmp_path, damage, message):
    folder = make_synthetic(tmp_path / "d", n_train=30, n_test=10)
    damage(folder)
    with pytest.raises(DataError, match=message):
        load_mnist(folder)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist.*--data-dir DIR"):
        load_mnist(tmp_path / "nope")
    with pytest.raises(DataError, match="no MNIST files in"):
        load_mnist(tmp_path)


def test_source_order_flag_env_config(tmp_path, monkeypatch):
    flag = make_synthetic(tmp_path / "flag", n_train=11, n_test=5)
    env = make_synthetic(tmp_path / "env", n_train=12, n_test=5)
    cfg = make_synthetic(tmp_path / "cfg", n_train=13, n_test=5)
    monkeypatch.setenv("MNIST_SEQ_DATA", str(env))
    assert len(load_mnist(flag, cfg).x_train) == 11
    assert len(load_mnist(None, cfg).x_train) == 12
    monkeypatch.delenv("MNIST_SEQ_DATA")
    assert len(load_mnist(None, cfg).x_train) == 13


def test_keras_cache_is_read_directly(tmp_path, monkeypatch):
    ds = load_path(make_synthetic(tmp_path / "d", n_train=14, n_test=5))
    (tmp_path / "kh" / "datasets").mkdir(parents=True)
    np.savez(tmp_path / "kh" / "datasets" / "mnist.npz", x_train=ds.x_train,
             y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    assert len(load_mnist().x_train) == 14


def test_no_source_says_how_to_point_at_files(monkeypatch):
    def offline():
        raise OSError("URL fetch failure: no network")

    fake = types.SimpleNamespace(datasets=types.SimpleNamespace(
        mnist=types.SimpleNamespace(load_data=offline)))
    monkeypatch.setitem(sys.modules, "keras", fake)
    with pytest.raises(DataError) as err:
        load_mnist()
    text = str(err.value)
    assert "downloading it failed (URL fetch failure" in text
    assert "--data-dir DIR" in text and "MNIST_SEQ_DATA=DIR" in text and "\n" not in text


def test_split_is_seeded_disjoint_and_sized():
    x = np.arange(1000 * 28 * 28, dtype=np.uint32).reshape(1000, 28, 28).astype(np.uint8)
    y = np.arange(1000) % 10
    xt, yt, xv, yv = split_train_val(x, y, 0.2, seed=3)
    assert (len(xt), len(xv)) == (800, 200)
    xt2, _, xv2, _ = split_train_val(x, y, 0.2, seed=3)
    assert np.array_equal(xt, xt2) and np.array_equal(xv, xv2)
    _, _, xv3, _ = split_train_val(x, y, 0.2, seed=4)
    assert not np.array_equal(xv, xv3)
    ids = np.arange(1000)
    it, _, iv, _ = split_train_val(ids, ids, 0.2, seed=3)
    assert not set(it) & set(iv) and len(set(it) | set(iv)) == 1000
    it, _, iv, _ = split_train_val(ids, ids, 0.1, seed=3, max_samples=300)
    assert (len(it), len(iv)) == (270, 30)


def test_to_float_scales_to_unit_interval():
    out = to_float(np.array([[0, 255]], dtype=np.uint8))
    assert out.dtype == np.float32 and out.tolist() == [[0.0, 1.0]]


@pytest.mark.parametrize("where", ["nowhere", "empty"])
def test_a_missing_data_folder_is_said_before_keras_loads(tmp_path, where):
    # A stand-in keras package that leaves a mark when imported: `train` must say the
    # folder is missing or empty without importing it.
    fake = tmp_path / "fake" / "keras"
    fake.mkdir(parents=True)
    mark = tmp_path / "keras-was-imported"
    (fake / "__init__.py").write_text(f"open({str(mark)!r}, 'w').close()\n"
                                      "raise ImportError('stand-in keras')\n")
    (tmp_path / "empty").mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(fake.parent), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("MNIST_SEQ_DATA", None)
    out = subprocess.run([sys.executable, "-m", "mnist_seq", "train", "--model", "mlp",
                          "--data-dir", str(tmp_path / where), "--run-dir",
                          str(tmp_path / "run")], capture_output=True, text=True, env=env)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith(("Error: data path from --data-dir does not exist",
                                  "Error: no MNIST files in")), out.stderr
    assert not mark.exists() and not (tmp_path / "run").exists()
