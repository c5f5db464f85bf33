"""inspect: every promised picture exists and is a valid image, for each model type."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from test_cli import SMOKE, assert_one_line_error, run

TINY = {
    "lstm": ["--model", "lstm", "--set", "model.units=[16, 16]"],
    "cnn": ["--model", "cnn", "--set",
            "model.conv=[{filters: 6, kernel: 5, padding: valid, pool: 2}, "
            "{filters: 12, kernel: 3, padding: same, pool: 2}]", "--set", "model.dense=[32]"],
    "mlp": ["--model", "mlp", "--set", "model.hidden=[64]"],
}
# Every type also gets which pixels decided and the map of digits (no snapshots here).
LEARNED = ["saliency-test5.png", "digit-map.png"]
EXPECTED = {
    "lstm": ["layers.txt", "lstm-reading-test5.png", "lstm-reading-test5.gif",
             "rows-read-accuracy.png", *LEARNED],
    "cnn": ["layers.txt", "cnn-filters.png", "cnn-feature-maps-test5.png", *LEARNED],
    "mlp": ["layers.txt", "mlp-units-test5.png", *LEARNED],
}


@pytest.fixture(scope="module")
def tiny_runs(data_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-runs")
    runs = {}
    for kind, args in TINY.items():
        runs[kind] = root / kind
        result = run("train", *args, *SMOKE, "--data-dir", str(data_dir), "--run-dir",
                     str(runs[kind]))
        assert result.exit_code == 0, result.output
    return runs


def valid_image(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.verify()  # raises on a damaged file
    img = Image.open(path)
    assert min(img.size) > 100, img.size
    return img


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(TINY))
def test_inspect_writes_every_picture(kind, tiny_runs, data_dir):
    run_dir = tiny_runs[kind]
    result = run("inspect", str(run_dir), "--index", "5", "--data-dir", str(data_dir),
                 "--map-digits", "300")
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (run_dir / "inspect").iterdir())
    assert written == sorted(EXPECTED[kind])
    for name in EXPECTED[kind]:
        assert f"Wrote {run_dir / 'inspect' / name}" in result.output
        if name.endswith((".png", ".gif")):
            img = valid_image(run_dir / "inspect" / name)
            if name.endswith(".gif"):
                assert img.n_frames == 28  # one frame per row read
    table = (run_dir / "inspect" / "layers.txt").read_text()
    assert "total parameters" in table
    if kind == "lstm":
        assert "(None, 28, 16): 28 timesteps x 16 units, because return_sequences=True" in table
        assert "return_sequences=False" in table
    if kind == "cnn":
        assert "'valid' padding loses 4 pixels: 28 - 5 + 1 = 24" in table
        assert "depth 6 = one feature map per filter" in table


@pytest.mark.slow
def test_inspect_own_image_and_several_lstm_runs(tiny_runs, data_dir, tmp_path):
    from mnist_seq.data import load_mnist

    digit = 255 - load_mnist(data_dir).x_test[7]
    Image.fromarray(digit).resize((84, 84)).save(tmp_path / "my digit.png")
    result = run("inspect", str(tiny_runs["lstm"]), str(tiny_runs["lstm"]), "--image",
                 str(tmp_path / "my digit.png"), "--data-dir", str(data_dir), "--map-digits",
                 "0")
    assert result.exit_code == 0, result.output
    valid_image(tiny_runs["lstm"] / "inspect" / "lstm-reading-my digit.png")
    valid_image(tiny_runs["lstm"] / "inspect" / "saliency-my digit.png")


def test_inspect_errors(tmp_path, data_dir):
    (tmp_path / "not-a-run").mkdir()
    assert_one_line_error(run("inspect", str(tmp_path / "not-a-run")),
                          "is not a finished mnist-seq run")
    assert_one_line_error(run("inspect", str(tmp_path), "--index", "1", "--image", "x.png"),
                          "give --index or --image, not both", code=2)


@pytest.mark.slow
def test_inspect_index_out_of_range(tiny_runs, data_dir):
    from mnist_seq.data import load_mnist

    n = len(load_mnist(data_dir).x_test)
    assert_one_line_error(run("inspect", str(tiny_runs["mlp"]), "--index", str(n),
                              "--data-dir", str(data_dir)), f"--index {n} is out of range")
