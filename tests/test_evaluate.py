"""evaluate, predict, runs: figures that agree with Keras, pictures that open, clean errors."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_cli import assert_one_line_error, run

from mnist_seq.cli import cli
from mnist_seq.data import load_mnist, to_float
from mnist_seq.errors import MnistSeqError


@pytest.fixture(scope="session")
def trained_run(data_dir, tmp_path_factory) -> Path:
    """An MLP trained for four epochs on 18,000 samples: good enough to be worth predicting.
    (Weaker ones, 87-93% right after two to four epochs on 5,400 samples, disagreed with
    themselves on 4.5-5.5% of the rescaled digits of the PNG test below.)"""
    run_dir = tmp_path_factory.mktemp("trained") / "mlp-run"
    result = CliRunner().invoke(cli, [
        "train", "--model", "mlp", "--epochs", "4", "--max-train-samples", "20000",
        "--data-dir", str(data_dir), "--run-dir", str(run_dir), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return run_dir


@pytest.mark.slow
def test_evaluate_agrees_with_keras_and_writes_pictures(trained_run, data_dir):
    result = run("evaluate", str(trained_run), "--data-dir", str(data_dir))
    assert result.exit_code == 0, result.output
    assert "top-2 accuracy" in result.output and "confusion matrix" in result.output
    figures = json.loads((trained_run / "evaluation.json").read_text())
    # Training scored the same model on the same digits through the same function.
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert (metrics["test_loss"], metrics["test_accuracy"]) == (figures["loss"],
                                                                figures["accuracy"])

    import keras

    ds = load_mnist(data_dir)
    model = keras.models.load_model(trained_run / "model.keras")
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    loss, acc = model.evaluate(to_float(ds.x_test), ds.y_test, verbose=0)
    assert figures["loss"] == pytest.approx(loss, abs=1e-4)
    assert figures["accuracy"] == pytest.approx(acc, abs=1e-4)
    assert figures["accuracy"] <= figures["top2_accuracy"] <= 1
    n = len(ds.y_test)
    assert sum(row["support"] for row in figures["per_class"]) == n
    confusion = np.array(figures["confusion"])
    assert confusion.sum() == n and np.trace(confusion) == round(figures["accuracy"] * n)
    assert confusion.sum(axis=1).tolist() == np.bincount(ds.y_test, minlength=10).tolist()
    worst = figures["worst_errors"]
    assert len(worst) == 25 and all(w["label"] != w["predicted"] for w in worst)
    assert [w["confidence"] for w in worst] == sorted((w["confidence"] for w in worst),
                                                      reverse=True)

    import matplotlib.image

    for name in ("confusion.png", "worst-errors.png"):
        assert matplotlib.image.imread(trained_run / name).shape[0] > 300

    as_json = run("evaluate", str(trained_run / "model.keras"), "--data-dir", str(data_dir),
                  "--json", "--max-test-samples", "300")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output)["samples"] == 300


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(784,), (28, 28, 1)])
def test_evaluate_reshapes_for_foreign_models(shape, data_dir, tmp_path):
    import keras

    inputs = keras.Input(shape)
    outputs = keras.layers.Dense(10)(keras.layers.Flatten()(inputs))  # logits, no softmax
    path = tmp_path / "foreign.keras"
    keras.Model(inputs, outputs).save(path)
    result = run("evaluate", str(path), "--data-dir", str(data_dir), "--json",
                 "--max-test-samples", "200")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["samples"] == 200


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims a size in its header and holds no pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_bad_models_and_images_are_one_line_errors(trained_run, tmp_path):
    import keras

    inputs = keras.Input((28, 28))
    x = keras.layers.Lambda(lambda t: t * 2)(keras.layers.Flatten()(inputs))
    keras.Model(inputs, keras.layers.Dense(10)(x)).save(tmp_path / "lambda.keras")
    inputs = keras.Input((32, 32))
    keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs))).save(
        tmp_path / "wrong-shape.keras")
    (tmp_path / "text.keras").write_text("not a model")
    (tmp_path / "empty.keras").write_bytes(b"")
    (tmp_path / "model.h5").write_bytes(b"\x89HDF\r\n")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "bomb.png").write_bytes(_png_header(7000, 7000))
    (tmp_path / "huge-bomb.png").write_bytes(_png_header(100_000, 100_000))
    (tmp_path / "bad.npy").write_bytes(b"nonsense")
    np.save(tmp_path / "wrong.npy", np.zeros((3, 32, 32)))
    (tmp_path / "empty-run").mkdir()
    model = str(trained_run)
    cases = [
        (["evaluate", str(tmp_path / "lambda.keras")], "unsafe content"),
        (["evaluate", str(tmp_path / "wrong-shape.keras")], "input shape (32, 32) does not fit"),
        (["evaluate", str(tmp_path / "text.keras")], "not a .keras model"),
        (["evaluate", str(tmp_path / "empty.keras")], "not a .keras model"),
        (["evaluate", str(tmp_path / "model.h5")], "expected a .keras model file"),
        (["evaluate", str(tmp_path / "empty-run")], "is not a finished mnist-seq run"),
        (["predict", str(tmp_path / "empty-run"), str(tmp_path / "x.png")],
         "is not a finished mnist-seq run"),
        (["evaluate", str(tmp_path / "missing")], "no such run folder or model file"),
        (["predict", model, str(tmp_path / "text.png")], "not a readable image"),
        (["predict", model, str(tmp_path / "empty.png")], "not a readable image"),
        (["predict", model, str(tmp_path / "bomb.png")], "over the 40,000,000-pixel limit"),
        (["predict", model, str(tmp_path / "huge-bomb.png")], "not a readable image"),
        (["predict", model, str(tmp_path / "missing.png")], "image not found"),
        (["predict", model, str(tmp_path / "bad.npy")], "not a readable .npy"),
        (["predict", model, str(tmp_path / "wrong.npy")], "expected (28, 28) or (N, 28, 28)"),
        (["predict", model, str(tmp_path / "notes.txt")], "expected a .png, .jpg"),
        (["plot-history", str(tmp_path / "empty-run")], "no history.json"),
        (["runs", str(tmp_path / "nowhere")], "no runs folder"),
    ]
    for args, fragment in cases:
        assert_one_line_error(run(*args), fragment)


def test_the_background_filter_is_pils_min_and_max_filter():
    from PIL import Image, ImageFilter

    from mnist_seq.predict import _rank_filter

    a = np.random.default_rng(1).integers(0, 256, (61, 47)).astype(np.uint8)
    for k in (3, 15, 35):
        for op, pil in ((np.min, ImageFilter.MinFilter), (np.max, ImageFilter.MaxFilter)):
            expected = np.asarray(Image.fromarray(a).filter(pil(k)))
            assert np.array_equal(_rank_filter(a, k, op), expected), (k, op)


@pytest.mark.slow
def test_predict_reads_every_pixel_format_alike_and_refuses_bombs_at_once(trained_run,
                                                                          tmp_path):
    import time

    import images

    from mnist_seq.predict import load_image, to_mnist

    files = {}
    for name, data in images.readable().items():
        files[name] = tmp_path / name
        files[name].write_bytes(data)
    plain = to_mnist(load_image(files["gray.png"])).astype(int)
    for name, path in files.items():  # the digit the model sees is the plain one's
        digit = to_mnist(load_image(path)).astype(int)
        assert np.abs(digit - plain).max() <= (40 if name.endswith(".jpg") else 0), name
    result = run("predict", str(trained_run), *map(str, files.values()), "--json")
    assert result.exit_code == 0, result.output
    answers = {r["input"]: r["top"][0]["class"] for r in json.loads(result.output)}
    assert len(set(answers.values())) == 1, answers
    for name, (data, fragment) in images.refused().items():
        path = tmp_path / f"refused-{name}.png"  # a GIF called .png is told by its content
        path.write_bytes(data)
        start = time.perf_counter()
        with pytest.raises(MnistSeqError, match=fragment):
            to_mnist(load_image(path))
        assert time.perf_counter() - start < 0.1, name
        assert_one_line_error(run("predict", str(trained_run), str(path)), fragment)


@pytest.mark.slow
def test_predict_on_scanned_style_pngs_matches_raw_predictions(trained_run, data_dir,
                                                               tmp_path):
    """200 test digits written as 4x, black-on-white PNGs get the label the model gives
    the raw arrays, at least 97% of the time."""
    from PIL import Image

    ds = load_mnist(data_dir)
    files = []
    for i in range(200):
        path = tmp_path / f"digit{i:03d}.png"
        Image.fromarray(255 - ds.x_test[i]).resize((112, 112), Image.Resampling.BICUBIC).save(path)
        files.append(str(path))
    result = run("predict", str(trained_run), *files, "--json", "--save-input",
                 str(tmp_path / "seen"))
    assert result.exit_code == 0, result.output
    from_png = [r["top"][0]["class"] for r in json.loads(result.output)]

    import keras

    model = keras.models.load_model(trained_run / "model.keras")
    raw = model.predict(to_float(ds.x_test[:200]), verbose=0).argmax(axis=1)
    agreement = np.mean(np.array(from_png) == raw)
    assert agreement >= 0.97, agreement
    seen = sorted((tmp_path / "seen").glob("*.png"))
    assert len(seen) == 200 and np.asarray(Image.open(seen[0])).shape == (28, 28)


@pytest.mark.slow
def test_predict_handles_light_on_dark_uneven_background_and_npy(trained_run, data_dir,
                                                                 tmp_path):
    from PIL import Image

    ds = load_mnist(data_dir)
    digit = ds.x_test[0].astype(float) / 255
    big = np.asarray(Image.fromarray(ds.x_test[0]).resize((200, 160)), float) / 255
    gradient = 0.1 + 0.3 * np.linspace(0, 1, 200)[None, :]  # darker left, lighter right
    Image.fromarray((np.clip(gradient + 0.6 * big, 0, 1) * 255).astype(np.uint8)).save(
        tmp_path / "glow.jpg")
    np.save(tmp_path / "many.npy", ds.x_test[:3])
    np.save(tmp_path / "one.npy", digit.astype(np.float32))
    result = run("predict", str(trained_run), str(tmp_path / "glow.jpg"),
                 str(tmp_path / "many.npy"), str(tmp_path / "one.npy"), "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [r["input"] for r in out] == ["glow.jpg", "many.npy[0]", "many.npy[1]",
                                         "many.npy[2]", "one.npy"]
    assert all(len(r["top"]) == 3 for r in out)
    assert out[1]["top"][0]["class"] == out[4]["top"][0]["class"]  # same digit, two formats
    text = run("predict", str(trained_run), str(tmp_path / "one.npy"))
    assert text.output.startswith("one.npy: ") and "%" in text.output


@pytest.mark.slow
def test_runs_lists_and_sorts(trained_run, tmp_path):
    result = run("runs", str(trained_run.parent))
    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()
    assert header.split()[:3] == ["name", "model", "params"]
    assert row.split()[:4] == ["mlp-run", "mlp", "407,050", "4"]
    listed = json.loads(run("runs", str(trained_run.parent), "--json",
                            "--sort", "test_accuracy").output)
    assert listed[0]["epochs"] == 4 and 0 < listed[0]["test_accuracy"] <= 1
    assert_one_line_error(run("runs", str(trained_run.parent), "--sort", "colour"),
                          "cannot sort by 'colour'")


@pytest.mark.slow
def test_report_is_one_self_contained_html_file(trained_run, data_dir):
    result = run("report", str(trained_run), "--data-dir", str(data_dir))
    assert result.exit_code == 0, result.output
    page = (trained_run / "report.html").read_text()
    figures = json.loads((trained_run / "evaluation.json").read_text())
    # curves, confusion, errors, which pixels decided, the map of digits, time
    assert page.count("src='data:image/png;base64,") == 6
    assert "http://" not in page and "https://" not in page and "is missing" not in page
    assert f"{figures['accuracy']:.4f}" in page and "samples_per_second" in page
    assert "Per class" in page and "type: mlp" in page
    assert_one_line_error(run("report", str(trained_run.parent)), "no metrics.json")
