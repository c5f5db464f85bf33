"""Never lose a run: resume after SIGKILL and Ctrl-C, divergence, the bad-input catalogue,
determinism. Every error is one line, a non-zero exit, and leaves existing files as they were."""

from __future__ import annotations

import csv
import errno
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_whole, fill, make_synthetic, write_idx
from test_cli import SMOKE, assert_one_line_error, run

# Long enough epochs (about a second each) to land a signal in the middle of one.
SLOW_EPOCHS = ["--model", "lstm", "--set", "model.units=[64]", "--max-train-samples", "6000",
               "--batch-size", "16", "--epochs", "3", "--max-test-samples", "500",
               "--device", "cpu"]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder, but Keras's own keras.json: `import keras` writes it into an
    empty KERAS_HOME in any process, whether the command then fails or not."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).parts[:1] != ("keras-home",)}


def start_training(run_dir: Path, data_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "mnist_seq", "train", *SLOW_EPOCHS, "--data-dir", str(data_dir),
         "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


class Output:
    """A process's output, read as it comes, so that a test can wait for a line."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines = proc, []
        self.reader = threading.Thread(target=lambda: self.lines.extend(proc.stdout),
                                       daemon=True)
        self.reader.start()

    def wait_for(self, text: str, timeout: float = 120) -> None:
        """Until a line holds `text` (the process still running)."""
        deadline = time.time() + timeout
        while not any(text in line for line in list(self.lines)):
            assert self.proc.poll() is None, self.text()
            assert time.time() < deadline, f"no {text!r} in time:\n{self.text()}"
            time.sleep(0.02)

    def text(self) -> str:
        """All of it, once the process has ended."""
        self.proc.wait(timeout=120)
        self.reader.join(timeout=60)
        return "".join(self.lines)


def follow(text: str, lead: str) -> subprocess.CompletedProcess:
    """Run, word for word, the command a message gives after `lead` (`mnist-seq` as this
    Python's module), with no MNIST_SEQ_DATA (conftest) and no flag added."""
    line = next(line for line in text.splitlines() if lead in line)
    words = shlex.split(line.split(lead, 1)[1])
    assert words[0] == "mnist-seq", line
    return subprocess.run([sys.executable, "-m", "mnist_seq", *words[1:]],
                          capture_output=True, text=True)


def wait_for_epochs(run_dir: Path, n: int, proc: subprocess.Popen, timeout: float = 120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if len(json.loads((run_dir / "history.json").read_text())) >= n:
                return
        except (OSError, ValueError):
            pass
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    raise AssertionError("training did not reach the epoch in time")


def assert_complete_run(run_dir: Path, epochs: int) -> list[dict]:
    history = json.loads((run_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(epochs))  # no gap, no duplicate
    with open(run_dir / "history.csv") as f:
        assert [int(float(r["epoch"])) for r in csv.DictReader(f)] == list(range(epochs))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == epochs and metrics["resumed"] is True
    for name in ("model.keras", "best.keras", "curves.png", "config.yaml"):
        assert (run_dir / name).stat().st_size > 0, name
    assert not (run_dir / "backup").exists()  # removed once the artifacts were complete
    assert not list(run_dir.glob(".*tmp*"))
    return history


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(data_dir, tmp_path):
    run_dir = tmp_path / "killed"
    proc = start_training(run_dir, data_dir)
    output = Output(proc)
    output.wait_for("Epoch 2/3")  # Keras's line as the second epoch begins
    wait_for_epochs(run_dir, 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "metrics.json").exists()
    before = json.loads((run_dir / "history.json").read_text())
    best_before = (run_dir / "best.keras").read_bytes()

    # As the README says to, no flag added: the data folder is the one the run read.
    result = run("train", "--resume", str(run_dir))
    assert result.exit_code == 0, result.output
    assert "Resuming" in result.output
    history = assert_complete_run(run_dir, 3)
    assert run("evaluate", str(run_dir)).exit_code == 0  # on the folder the run read
    assert history[: len(before)] == before  # the epochs done before the kill are kept as-is
    # best.keras changed only if a later epoch beat the best validation accuracy so far.
    best_so_far = max(r["val_accuracy"] for r in before)
    improved = max(r["val_accuracy"] for r in history[len(before):]) > best_so_far
    assert ((run_dir / "best.keras").read_bytes() != best_before) == improved

    # The same figures as an uninterrupted run, within noise.
    straight = tmp_path / "straight"
    result = run("train", *SLOW_EPOCHS, "--data-dir", str(data_dir), "--run-dir", str(straight))
    assert result.exit_code == 0, result.output
    plain = json.loads((straight / "history.json").read_text())
    assert abs(plain[-1]["val_accuracy"] - history[-1]["val_accuracy"]) < 0.05


@pytest.mark.slow
def test_ctrl_c_saves_and_says_how_to_resume(data_dir, tmp_path):
    run_dir = tmp_path / "interrupted"
    proc = start_training(run_dir, data_dir)
    output = Output(proc)
    output.wait_for("Epoch 2/3")
    proc.send_signal(signal.SIGINT)
    out = output.text()
    assert proc.returncode == 130, out
    assert f"Resume with: mnist-seq train --resume {run_dir}" in out and "Traceback" not in out
    assert (run_dir / "backup").is_dir() and not (run_dir / "metrics.json").exists()

    result = follow(out, "Resume with: ")
    assert result.returncode == 0, result.stdout + result.stderr
    assert_complete_run(run_dir, 3)


@pytest.mark.slow
def test_resume_restores_the_optimizer_state(data_dir, tmp_path, monkeypatch):
    """Stopped after its first epoch and resumed, a run's learning-rate schedule goes on
    from the optimizer's saved step: the same rate per epoch as a run never stopped."""
    from mnist_seq import callbacks
    from mnist_seq.errors import TrainingInterrupted

    args = ["train", "--model", "mlp", *SMOKE, "--epochs", "3", "--set",
            "train.lr_schedule=cosine", "--data-dir", str(data_dir)]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run(*args, "--run-dir", str(straight)).exit_code == 0
    save = callbacks.EpochCheckpoint.on_epoch_end

    def save_then_stop(self, epoch, logs=None):
        save(self, epoch, logs)
        raise TrainingInterrupted("stopped after the first epoch")

    monkeypatch.setattr(callbacks.EpochCheckpoint, "on_epoch_end", save_then_stop)
    assert run(*args, "--run-dir", str(stopped)).exit_code == 130
    monkeypatch.undo()
    assert [p.name for p in (stopped / "backup").iterdir()] == ["epoch-1.weights.h5"]
    result = run("train", "--resume", str(stopped), "--data-dir", str(data_dir))
    assert result.exit_code == 0 and "after epoch 1 of 3" in result.output, result.output
    rates = [[r["learning_rate"] for r in json.loads((d / "history.json").read_text())]
             for d in (straight, stopped)]
    assert rates[0] == pytest.approx(rates[1], rel=1e-6) and rates[0][0] > rates[0][1] > 0


@pytest.mark.slow
def test_diverging_run_stops_with_a_message(data_dir, tmp_path):
    run_dir = tmp_path / "diverged"
    result = run("train", "--model", "mlp", *SMOKE, "--learning-rate", "1e3", "--data-dir",
                 str(data_dir), "--run-dir", str(run_dir))
    assert result.exit_code == 1
    error = result.output.strip().splitlines()[-1]
    assert error.startswith("Error: training diverged: the loss became ")
    assert "lower train.learning_rate" in error and "Traceback" not in result.output
    assert "in epoch 1 (" in error  # the MLP trains each epoch in one call: no batch number
    assert not (run_dir / "model.keras").exists() and not (run_dir / "metrics.json").exists()


@pytest.mark.slow
def test_deterministic_runs_repeat_exactly(data_dir, tmp_path):
    histories = []
    for name in ("one", "two"):
        result = run("train", "--model", "cnn", *SMOKE, "--epochs", "2", "--seed", "5",
                     "--deterministic", "--data-dir", str(data_dir), "--run-dir",
                     str(tmp_path / name))
        assert result.exit_code == 0, result.output
        rows = json.loads((tmp_path / name / "history.json").read_text())
        histories.append([{k: v for k, v in r.items() if k != "seconds"} for r in rows])
    assert histories[0] == histories[1]
    metrics = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert metrics["seed"] == 5 and metrics["deterministic"] is True
    for key in ("intra_op_threads", "inter_op_threads", "cpu_count", "tensorflow", "keras"):
        assert key in metrics


def _data_case(damage):
    def make(tmp_path: Path) -> list[str]:
        folder = make_synthetic(tmp_path / "data", n_train=60, n_test=20)
        damage(folder)
        return ["--model", "mlp", "--data-dir", str(folder)]
    return make


def _args(*args):
    return lambda tmp_path: [a.format(tmp=tmp_path) for a in args]


def _finished_run(tmp_path: Path) -> list[str]:
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "config.yaml").write_text("model: {type: mlp}\n")
    (tmp_path / "done" / "metrics.json").write_text("{}")
    return ["--resume", str(tmp_path / "done")]


CATALOGUE = {
    "malformed-yaml": (_args("--config", "{tmp}/bad.yaml"), "malformed YAML at line", 2),
    "empty-config": (_args("--config", "{tmp}/empty.yaml"), "the config file is empty", 2),
    "misspelt-key": (_args("--set", "model.dropuot=0.1"), "Did you mean 'dropout'", 2),
    "wrong-type": (_args("--batch-size", "big"), "expected an integer, got str 'big'", 2),
    "epochs-zero": (_args("--epochs", "0"), "train.epochs: got 0, expected an integer > 0", 2),
    "epochs-negative": (_args("--epochs", "-3"), "train.epochs: got -3", 2),
    "dropout-one": (_args("--set", "model.dropout=1"), "expected a number in [0, 1)", 2),
    "batch-zero": (_args("--batch-size", "0"), "train.batch_size: got 0", 2),
    "val-fraction": (_args("--set", "train.validation_fraction=1.5"), "in (0, 1)", 2),
    "unknown-model": (_args("--model", "resnet"), "unknown model 'resnet'", 2),
    "missing-data": (_args("--data-dir", "{tmp}/none"), "does not exist", 1),
    "empty-file": (_data_case(lambda f: (f / "train-labels-idx1-ubyte.gz").write_bytes(b"")),
                   "too short for an IDX header", 1),
    "truncated-file": (_data_case(lambda f: (f / "t10k-images-idx3-ubyte.gz").write_bytes(
        (f / "t10k-images-idx3-ubyte.gz").read_bytes()[:100])), "corrupt or truncated gzip", 1),
    "corrupt-file": (_data_case(lambda f: (f / "t10k-labels-idx1-ubyte.gz").write_bytes(
        b"\x1f\x8b\x08\x00garbage")), "corrupt or truncated gzip", 1),
    "wrong-magic": (_data_case(lambda f: write_idx(f / "train-labels-idx1-ubyte.gz",
                                                   np.zeros((60, 28, 28)))),
                    "wrong magic number 0x00000803, expected 0x00000801", 1),
    "count-mismatch": (_data_case(lambda f: write_idx(f / "t10k-labels-idx1-ubyte.gz",
                                                      np.zeros(19))),
                       "20 test images but 19 test labels", 1),
    "labels-out-of-range": (_data_case(lambda f: write_idx(f / "train-labels-idx1-ubyte.gz",
                                                           np.full(60, 12))),
                            "expected integers 0..9", 1),
    "run-dir-exists": (_args("--run-dir", "{tmp}/existing"), "run folder already exists", 1),
    "unwritable-output": (_args("--runs-root", "{tmp}/a-file/runs"), "cannot create run folder",
                          1),
    "resume-missing": (_args("--resume", "{tmp}/no-such-run"), "no run to resume", 1),
    "resume-finished": (_finished_run, "has finished already", 1),
    "resume-with-config": (_args("--resume", "{tmp}/existing", "--epochs", "3"),
                           "--resume continues a run with its own config.yaml", 2),
}


@pytest.mark.parametrize("case", sorted(CATALOGUE))
def test_bad_input_catalogue(case, data_dir, tmp_path):
    make_args, message, code = CATALOGUE[case]
    (tmp_path / "bad.yaml").write_text("model:\n  type: mlp\n   units: 3\n")
    (tmp_path / "empty.yaml").write_text("# nothing here yet\n")
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "notes.txt").write_text("keep me")
    (tmp_path / "a-file").write_text("I am a file, not a folder")
    args = make_args(tmp_path)
    if "--data-dir" not in args:
        args += ["--data-dir", str(data_dir)]
    if "--runs-root" not in args:
        args += ["--runs-root", str(tmp_path / "runs")]
    smoke = [] if "--resume" in args else SMOKE  # --resume takes no config overrides
    before = snapshot(tmp_path)
    result = run("train", *smoke, *args)
    assert_one_line_error(result, message, code=code)
    assert snapshot(tmp_path) == before  # nothing existing changed, nothing new written


@pytest.mark.slow
def test_a_disk_that_fills_mid_run_loses_nothing(data_dir, small_disk):
    run_dir = small_disk / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnist_seq", "train", "--model", "mlp", "--set",
         "model.hidden=[64]", "--max-train-samples", "3000", "--epochs", "60",
         "--max-test-samples", "500", "--device", "cpu", "--data-dir", str(data_dir),
         "--run-dir", str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    wait_for_epochs(run_dir, 2, proc)
    ballast = fill(small_disk)  # another program takes the rest of the disk
    out, _ = proc.communicate(timeout=300)
    errors = [line for line in out.splitlines() if line.startswith("Error: ")]
    assert proc.returncode == 1 and len(errors) == 1, out
    assert "Traceback" not in out and "Exception ignored" not in out, out
    assert "No space left on device" in errors[0], errors[0]
    named = Path(errors[0].split("cannot write ", 1)[1].split(":", 1)[0])
    assert named.parent in (run_dir, run_dir / "backup") and not named.name.startswith(".")
    assert_whole(run_dir)
    ballast.unlink()
    resumed = follow(out, "resume with: ")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_complete_run(run_dir, 60)
    assert_whole(run_dir)


def test_full_disk_is_a_clean_error(data_dir, tmp_path, monkeypatch):
    """A disk that fills while the run folder is written: one line, no half files."""
    real_replace = os.replace

    def full(src, dst):
        if str(dst).endswith("config.yaml"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    result = run("train", "--model", "mlp", *SMOKE, "--data-dir", str(data_dir),
                 "--run-dir", str(tmp_path / "run"))
    assert_one_line_error(result, "cannot write", "No space left on device")
    assert not list((tmp_path / "run").glob("*"))  # the temporary file was cleaned up


def test_debug_shows_the_traceback(tmp_path):
    result = run("--debug", "train", "--model", "mlp", "--epochs", "0")
    assert result.exit_code != 0 and result.exception is not None
    assert "train.epochs: got 0" in str(result.exception)
