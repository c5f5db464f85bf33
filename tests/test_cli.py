"""The command line, through click's CliRunner: training writes a complete run folder,
and every user error ends in one line and a non-zero exit."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import make_synthetic, write_idx

from mnist_seq.cli import cli

HISTORY_KEYS = {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate",
                "seconds"}
SMOKE = ["--epochs", "1", "--max-train-samples", "300", "--max-test-samples", "500",
         "--device", "cpu"]


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def assert_one_line_error(result, *fragments: str, code: int | None = None):
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_help_does_not_load_tensorflow():
    code = ("import sys; from click.testing import CliRunner; from mnist_seq.cli import cli; "
            "r = CliRunner().invoke(cli, ['train', '--help']); assert r.exit_code == 0; "
            "assert '--max-train-samples' in r.output; "
            "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version_and_python_dash_m():
    from mnist_seq import __version__

    assert run("--version").output.strip() == f"mnist-seq, version {__version__}"
    out = subprocess.run([sys.executable, "-m", "mnist_seq", "--version"], capture_output=True,
                         text=True, check=True)
    assert __version__ in out.stdout


@pytest.mark.slow
def test_train_writes_a_complete_run_folder(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = run("train", "--model", "lstm", *SMOKE, "--data-dir", str(data_dir),
                 "--run-dir", str(run_dir), "--set", "model.units=[32, 32]", "--seed", "7",
                 "--set", "train.lr_schedule=constant")  # so the recorded rate is 1e-3
    assert result.exit_code == 0, result.output
    assert "on CPU" in result.output and "Test accuracy" in result.output

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["units"] == [32, 32] and config["train"]["seed"] == 7
    assert config["train"]["epochs"] == 1 and config["data"]["max_train_samples"] == 300

    with open(run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and set(rows[0]) >= HISTORY_KEYS
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history) == 1 and set(history[0]) >= HISTORY_KEYS
    assert history[0]["learning_rate"] == pytest.approx(1e-3)
    assert float(rows[0]["val_accuracy"]) == pytest.approx(history[0]["val_accuracy"])

    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test_loss", "test_accuracy", "train_seconds", "samples_per_second", "device",
                "seed", "python", "tensorflow", "keras", "command"):
        assert key in metrics, key
    assert metrics["train_samples"] == 270 and metrics["val_samples"] == 30
    assert metrics["test_samples"] == 500 and metrics["seed"] == 7
    # Every step outside the epochs is timed, and model.fit's time holds its epochs.
    phases = metrics["phase_seconds"]
    assert set(phases) == {"data", "keras", "compile", "start", "fit", "save", "score",
                           "curves"} and min(phases.values()) >= 0
    assert phases["fit"] >= metrics["train_seconds"] - 0.01

    import keras

    from mnist_seq.data import load_mnist, to_float

    ds = load_mnist(data_dir)
    for name in ("model.keras", "best.keras"):
        model = keras.models.load_model(run_dir / name)
        assert model.predict(to_float(ds.x_test[:4]), verbose=0).shape == (4, 10)
    # The recorded test figures are those of the saved final model.
    model = keras.models.load_model(run_dir / "model.keras")
    loss, acc = model.evaluate(to_float(ds.x_test[:500]), ds.y_test[:500], verbose=0)
    assert metrics["test_accuracy"] == pytest.approx(acc, abs=1e-4)
    assert metrics["test_loss"] == pytest.approx(loss, abs=1e-4)

    import matplotlib.image

    png = matplotlib.image.imread(run_dir / "curves.png")
    assert png.ndim == 3 and png.shape[1] > png.shape[0] > 200  # a wide 1x2 figure
    assert not list(run_dir.glob(".*tmp*"))  # no temporary files left behind


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cnn", "mlp", "lstm-single"])
def test_every_seed_model_trains(model, data_dir, tmp_path):
    result = run("train", "--model", model, *SMOKE, "--data-dir", str(data_dir),
                 "--runs-root", str(tmp_path))
    assert result.exit_code == 0, result.output
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.startswith(f"{model}-")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["epochs"] == 1


@pytest.mark.slow
def test_plot_history_one_and_several_runs(data_dir, tmp_path):
    for name in ("a", "b"):
        result = run("train", "--model", "mlp", *SMOKE, "--epochs", "2", "--data-dir",
                     str(data_dir), "--run-dir", str(tmp_path / name))
        assert result.exit_code == 0, result.output
    out = tmp_path / "both.png"
    result = run("plot-history", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out))
    assert result.exit_code == 0, result.output
    import matplotlib.image

    assert matplotlib.image.imread(out).shape[0] > 200
    assert_one_line_error(run("plot-history", str(tmp_path)), "no history.json",
                          "mnist-seq run folder")
    result = run("plot-history", str(tmp_path / "a"), "--metric", "val_loss", "--metric",
                 "learning_rate", "--log-loss")
    assert result.exit_code == 0 and (tmp_path / "a" / "curves.png").is_file(), result.output
    assert_one_line_error(run("plot-history", str(tmp_path / "a"), "--metric", "acc"),
                          "no metric 'acc' in the history; recorded: accuracy")


def test_existing_run_dir_is_never_touched(data_dir, tmp_path):
    run_dir = tmp_path / "taken"
    run_dir.mkdir()
    (run_dir / "keep.txt").write_text("precious")
    result = run("train", "--model", "mlp", *SMOKE, "--data-dir", str(data_dir),
                 "--run-dir", str(run_dir))
    assert_one_line_error(result, "run folder already exists", str(run_dir))
    assert [p.name for p in run_dir.iterdir()] == ["keep.txt"]
    assert (run_dir / "keep.txt").read_text() == "precious"


def _corrupt(folder: Path) -> None:
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")


def _wrong_magic(folder: Path) -> None:
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((40, 28, 28)), magic=0x0801)


@pytest.mark.parametrize(
    "args, damage, fragments, code",
    [
        (["--data-dir", "{tmp}/nowhere"], None, ["does not exist", "--data-dir DIR"], 1),
        (["--data-dir", "{data}"], _corrupt, ["corrupt or truncated gzip"], 1),
        (["--data-dir", "{data}"], _wrong_magic, ["wrong magic number"], 1),
        (["--model", "lstmm"], None, ["unknown model 'lstmm'", "Did you mean 'lstm'"], 2),
        (["--config", "{tmp}/bad.yaml"], None, ["malformed YAML at line"], 2),
        (["--set", "train.epoch=3"], None, ["unknown config key 'train.epoch'",
                                            "Did you mean 'epochs'"], 2),
        (["--epochs", "ten"], None, ["train.epochs: expected an integer, got str 'ten'"], 2),
        (["--batch-size", "0"], None, ["train.batch_size: got 0"], 2),
        (["--config", "{tmp}/missing.yaml"], None, ["config file not found"], 2),
    ],
    ids=["missing-dir", "corrupt-idx", "wrong-magic", "unknown-model", "malformed-yaml",
         "unknown-key", "wrong-type", "out-of-range", "missing-config"],
)
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, args, damage, fragments, code):
    data = make_synthetic(tmp_path / "data")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    if damage:
        damage(data)
    args = [a.format(tmp=tmp_path, data=data) for a in args]
    if "--data-dir" not in args:
        args += ["--data-dir", str(data)]
    result = run("train", *args, "--runs-root", str(tmp_path / "runs"))
    assert_one_line_error(result, *fragments, code=code)
    assert not (tmp_path / "runs").exists()  # no run folder for a run that never started
