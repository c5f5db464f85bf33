"""Seeing the network learn: snapshots at the named batches and nowhere else, continued
by a resumed run; the pixels that decided (a model that looks at one pixel, the
integrated gradients' sum, occlusion as a check); the map of digits, the same for a seed;
every picture a valid image with its panels, in inspect and in the report."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import assert_one_line_error, run
from test_inspect import TINY
from test_robustness import Output, wait_for_epochs

from mnist_seq.rundir import RunDir
from mnist_seq.snapshots import BATCHES

SLICE = ["--max-train-samples", "3000", "--max-test-samples", "300", "--device", "cpu"]
# Long enough epochs (a few seconds each) to kill the run in its second.
SLOW = ["--max-train-samples", "8000", "--batch-size", "16", "--epochs", "3",
        "--max-test-samples", "300", "--device", "cpu"]


def expected_steps(steps_per_epoch: int, epochs: int, batches: bool) -> list[int]:
    """Before training, after each named batch the run reaches, after each epoch."""
    named = {b for b in BATCHES if b <= steps_per_epoch * epochs} if batches else set()
    return sorted({0} | named | {steps_per_epoch * (e + 1) for e in range(epochs)})


def steps_of(run_dir: RunDir) -> int:
    """Batches per epoch: the run's training digits in its batches."""
    metrics, config = run_dir.read_metrics(), run_dir.read_config()
    return -(-metrics["train_samples"] // config["train"]["batch_size"])


def train(kind: str, folder: Path, data_dir: Path, *args: str) -> RunDir:
    result = run("train", *TINY[kind], *SLICE, "--epochs", "2", "--snapshots",
                 "--data-dir", str(data_dir), "--run-dir", str(folder), *args)
    assert result.exit_code == 0, result.output
    return RunDir(folder)


@pytest.fixture(scope="module")
def snapshot_runs(data_dir, tmp_path_factory) -> dict[str, RunDir]:
    root = tmp_path_factory.mktemp("learning")
    return {kind: train(kind, root / kind, data_dir) for kind in ("cnn", "lstm")}


def load(path: Path):
    import keras

    return keras.saving.load_model(path)


@pytest.mark.slow
def test_cnn_snapshots_are_the_filters_at_the_named_batches_and_nowhere_else(snapshot_runs):
    run_dir = snapshot_runs["cnn"]
    kept, steps = run_dir.read_snapshots(), steps_of(run_dir)
    assert kept.steps == expected_steps(steps, 2, batches=True)
    assert kept.labels()[:3] == ["initial", "batch 1", "batch 2"]
    assert kept.labels()[-1] == f"epoch 2 (batch {2 * steps})"
    conv = load(run_dir / RunDir.MODEL).get_layer("conv_1").get_weights()[0]  # (5, 5, 1, 6)
    np.testing.assert_array_equal(kept.values[-1], np.moveaxis(conv[:, :, 0], -1, 0))
    from mnist_seq.explain import initial_model

    start = initial_model(run_dir, run_dir.read_config()).get_layer("conv_1").get_weights()[0]
    np.testing.assert_array_equal(kept.values[0], np.moveaxis(start[:, :, 0], -1, 0))
    # Every batch moved every filter: no two snapshots alike.
    moved = [np.abs(b - a).max() for a, b in zip(kept.values, kept.values[1:], strict=False)]
    assert min(moved) > 0


@pytest.mark.slow
def test_an_lstm_keeps_its_reading_of_one_digit_after_each_epoch(snapshot_runs, data_dir):
    from mnist_seq.data import load_mnist
    from mnist_seq.evaluation import fit_input
    from mnist_seq.explain import rows_reader

    run_dir = snapshot_runs["lstm"]
    kept = run_dir.read_snapshots()
    assert kept.steps == expected_steps(steps_of(run_dir), 2, batches=False)
    digit = load_mnist(data_dir).x_test[0]
    np.testing.assert_array_equal(kept.digit, digit)
    model = load(run_dir / RunDir.MODEL)
    reader = rows_reader(model, run_dir.read_config())
    rows = np.asarray(reader.predict_on_batch(fit_input(reader, digit[None])))[0]
    np.testing.assert_allclose(kept.values[-1], rows, atol=1e-5)  # Keras's own reading
    assert not np.allclose(kept.values[0], kept.values[-1], atol=1e-3)


@pytest.mark.slow
def test_snapshots_continue_after_a_kill_as_if_nothing_happened(data_dir, tmp_path):
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mnist_seq", "train", *TINY["cnn"], *SLOW,
                             "--snapshots", "--data-dir", str(data_dir), "--run-dir",
                             str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    output = Output(proc)
    wait_for_epochs(run_dir, 1, proc)
    output.wait_for("Epoch 2/3")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = RunDir(run_dir).read_snapshots()

    result = run("train", "--resume", str(run_dir))
    assert result.exit_code == 0, result.output
    steps = steps_of(RunDir(run_dir))
    assert before.steps == expected_steps(steps, 1, batches=True)
    after = RunDir(run_dir).read_snapshots()
    assert after.steps == expected_steps(steps, 3, batches=True)
    for a, b in zip(before.values, after.values, strict=False):  # the first epoch's, kept
        np.testing.assert_array_equal(a, b)


def one_pixel_model(row: int, col: int, target: int):
    """A model that looks at one pixel only: it raises `target`'s logit by that pixel."""
    import keras

    inputs = keras.Input((28, 28))  # float32 throughout, whatever policy a run left set
    dense = keras.layers.Dense(10, activation="softmax", name="classes", dtype="float32")
    model = keras.Model(inputs, dense(keras.layers.Flatten(dtype="float32")(inputs)))
    kernel = np.zeros((784, 10), np.float32)
    kernel[row * 28 + col, target] = 6.0
    dense.set_weights([kernel, np.zeros(10, np.float32)])
    return model


def test_a_model_that_looks_at_one_pixel_is_explained_by_that_pixel_alone():
    from mnist_seq import saliency

    digit = np.random.default_rng(0).integers(1, 256, (28, 28), dtype=np.uint8)
    model = one_pixel_model(9, 17, target=3)
    why = saliency.explain_digit(model, saliency.gradient_fn(model), digit)
    assert why.classes[0] == 3
    for m in why.maps:
        assert m[9, 17] != 0
        m[9, 17] = 0
        assert not m.any()  # no other pixel pushed anything
    occluded = saliency.occlusion(model, digit, 3)
    assert occluded[8:12, 16:20].min() > 0 and not occluded[:8].any()


@pytest.mark.slow
def test_integrated_gradients_add_up_and_agree_with_occlusion(snapshot_runs, data_dir):
    from mnist_seq import saliency
    from mnist_seq.data import load_mnist, to_float

    test = load_mnist(data_dir)
    model = load(snapshot_runs["cnn"] / RunDir.MODEL)
    grad = saliency.gradient_fn(model)
    agreement = []
    for i in range(5):
        digit = test.x_test[i]
        why = saliency.explain_digit(model, grad, digit, steps=64)
        probs = np.asarray(model.predict_on_batch(np.stack([to_float(digit),
                                                            np.zeros((28, 28))])))
        for c, m in zip(why.classes, why.maps, strict=True):
            assert m.sum() == pytest.approx(probs[0, c] - probs[1, c], abs=0.03)
        pooled = why.maps[0].reshape(7, 4, 7, 4).sum(axis=(1, 3))
        occluded = saliency.occlusion(model, digit, why.classes[0]).reshape(
            7, 4, 7, 4).sum(axis=(1, 3))
        agreement.append(np.corrcoef(pooled.ravel(), occluded.ravel())[0, 1])
    assert np.median(agreement) > 0.3, agreement


@pytest.mark.slow
def test_the_digit_map_is_the_same_for_a_seed(snapshot_runs, data_dir):
    from mnist_seq import digit_map
    from mnist_seq.data import load_mnist
    from mnist_seq.explain import initial_model

    pytest.importorskip("sklearn")
    test = load_mnist(data_dir)
    run_dir = snapshot_runs["cnn"]
    model, start = load(run_dir / RunDir.MODEL), initial_model(run_dir, run_dir.read_config())
    images, labels = test.x_test[:400], test.y_test[:400]
    first = digit_map.digit_maps(model, start, images, labels, seed=0)
    again = digit_map.digit_maps(model, start, images, labels, seed=0)
    assert [m.method for m in first] == ["PCA", "t-SNE"]
    for a, b in zip(first, again, strict=True):
        assert a.trained.shape == a.initial.shape == (400, 2)
        np.testing.assert_array_equal(a.trained, b.trained)
        np.testing.assert_array_equal(a.initial, b.initial)
    predicted = np.asarray(model.predict(images / 255.0, verbose=0)).argmax(1)
    np.testing.assert_array_equal(first[0].predicted, predicted)


def frames(path: Path) -> int:
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert min(img.size) > 100, img.size
        return getattr(img, "n_frames", 1)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["cnn", "lstm"])
def test_inspect_and_the_report_show_how_it_learned(kind, snapshot_runs, data_dir):
    run_dir = snapshot_runs[kind]
    result = run("inspect", str(run_dir.path), "--index", "4", "--map-digits", "300")
    assert result.exit_code == 0, result.output
    kept = run_dir.read_snapshots()
    learned = ["learning.png", "saliency-test4.png", "digit-map.png"]
    if kind == "cnn":
        learned += ["learning.gif", "weights-moved.png"]
    for name in learned:
        assert f"Wrote {run_dir / 'inspect' / name}" in result.output
        count = frames(run_dir / "inspect" / name)
        assert count == (len(kept.steps) if name.endswith(".gif") else 1)
    result = run("report", str(run_dir.path))
    assert result.exit_code == 0, result.output
    page = (run_dir / RunDir.REPORT).read_text()
    for heading in ("The network as it learned", "The pixels that decided",
                    "The map of digits"):
        assert f"<h2>{heading}</h2>" in page
    assert page.count("data:image/gif;base64,") == (kind == "cnn")
    assert "is missing" not in page


def test_every_picture_has_its_panels():
    from mnist_seq import learning
    from mnist_seq.digit_map import DigitMap
    from mnist_seq.saliency import Saliency
    from mnist_seq.snapshots import Snapshots

    rng = np.random.default_rng(0)
    weights = Snapshots("cnn", np.zeros((28, 28), np.uint8), [0, 1, 2, 9], [-1, 0, 0, 0],
                        [False, False, False, True], list(rng.normal(size=(4, 6, 5, 5))))
    assert len(learning.weights_still(weights, "t").axes) == 4 * 6
    assert len(learning.weights_frames(weights, "t")) == 4
    assert len(learning.weights_moved(weights, "t").axes) == 2
    rows = Snapshots("lstm", np.zeros((28, 28), np.uint8), [0, 9, 18], [-1, 0, 1],
                     [False, True, True], list(rng.random(size=(3, 28, 10))))
    assert len(learning.lstm_learning(rows, "t").axes) == 1 + 3
    why = Saliency([7, 1], [0.9, 0.05], rng.normal(size=(2, 28, 28)))
    assert len(learning.saliency_picture(np.zeros((28, 28)), why, "t").axes) == 3 + 1  # + bar
    labels = rng.integers(0, 10, 50)
    maps = [DigitMap(name, rng.normal(size=(50, 2)), rng.normal(size=(50, 2)), labels,
                     (labels + (np.arange(50) < 3)) % 10) for name in ("PCA", "t-SNE")]
    figure = learning.digit_map_picture(maps, np.zeros((50, 28, 28)), "t")
    assert len(figure.axes) == 2 * 2 + 3  # two maps per projection, the three mistakes once


@pytest.mark.slow
def test_damaged_snapshots_are_one_line_that_says_what_to_do(snapshot_runs, tmp_path):
    import shutil

    copy = tmp_path / "cnn"
    shutil.copytree(snapshot_runs["cnn"].path, copy)
    (copy / RunDir.SNAPSHOTS).write_bytes(b"PK\x03\x04 not a whole zip")
    assert_one_line_error(run("inspect", str(copy), "--map-digits", "0"),
                          "snapshots.npz: unreadable")
    assert "remove it to go on" in run("inspect", str(copy)).output
    assert (copy / RunDir.SNAPSHOTS).read_bytes().startswith(b"PK")  # left as it was
