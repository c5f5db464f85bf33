"""serve: the JSON API through Starlette's test client, a real server on a real port,
and a real headless Chromium that draws a digit on the page and reads the answer."""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from test_cli import SMOKE, assert_one_line_error, run

pytest.importorskip("starlette")
pytest.importorskip("httpx2")

import images  # noqa: E402 (the unusual and hostile images)
import page  # noqa: E402 (the server and the browser, as a person uses them)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, data_dir) -> list[Path]:
    """A tiny LSTM run and a tiny CNN run."""
    root = tmp_path_factory.mktemp("serve")
    runs = []
    for model in ("lstm-single", "cnn-fast"):
        folder = root / model
        result = run("train", "--model", model, *SMOKE, "--data-dir", str(data_dir),
                     "--run-dir", str(folder))
        assert result.exit_code == 0, result.output
        runs.append(folder)
    return runs


@pytest.fixture(scope="module")
def client(two_runs):
    from starlette.testclient import TestClient

    from mnist_seq.serve import load_readers, make_app

    return TestClient(make_app(load_readers(two_runs)))


def digit_png(data_dir: Path, index: int = 0) -> bytes:
    """A test digit as a black-on-white PNG, 5x larger, as a user would upload it."""
    from PIL import Image

    from mnist_seq.data import load_mnist

    image = load_mnist(data_dir).x_test[index]
    buffer = io.BytesIO()
    Image.fromarray(255 - image).resize((140, 140)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_a_digit_gets_every_runs_answer(client, data_dir):
    response = client.post("/api/predict", content=digit_png(data_dir))
    assert response.status_code == 200, response.text
    body = response.json()
    assert np.array(body["input"]).shape == (28, 28)
    lstm, cnn = body["runs"]
    assert (lstm["name"], lstm["type"], cnn["name"], cnn["type"]) == (
        "lstm-single", "lstm", "cnn-fast", "cnn")
    for entry in (lstm, cnn):
        probs = [t["probability"] for t in entry["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.001
    rows = np.array(lstm["rows"])
    assert rows.shape == (28, 10)
    np.testing.assert_allclose(rows.sum(axis=1), 1, atol=1e-3)
    # After the last row the LSTM's per-row answer is its answer.
    assert int(rows[-1].argmax()) == lstm["top"][0]["class"]
    maps = cnn["feature_maps"]
    assert maps["shape"] == [28, 28, 16] and np.array(maps["images"]).shape == (16, 28, 28)


@pytest.mark.slow
def test_explain_says_which_pixels_decided_and_only_when_asked(client, data_dir):
    body = digit_png(data_dir)
    plain = client.post("/api/predict", content=body).json()
    assert all("saliency" not in r for r in plain["runs"])  # reading as you draw: no maps
    explained = client.post("/api/predict?explain=1", content=body).json()
    digit = np.array(explained["input"])
    for entry, before in zip(explained["runs"], plain["runs"], strict=True):
        assert entry["top"] == before["top"]
        top = [t["class"] for t in entry["top"][:2]]
        assert entry["saliency"]["classes"] == top
        maps = np.array(entry["saliency"]["maps"])
        assert maps.shape == (2, 28, 28) and np.abs(maps).max() == 100
        # Integrated gradients from a black image: a black pixel pushed nothing.
        assert not maps[:, digit == 0].any()
        assert maps[0].sum() > 0  # the answer's pixels, on the whole, pushed for it


@pytest.mark.slow
def test_the_api_sees_what_predict_sees(client, two_runs, data_dir, tmp_path):
    """The same preprocessing and figures as `mnist-seq predict`."""
    from mnist_seq.predict import load_image, predict_files, to_mnist

    png = tmp_path / "digit.png"
    png.write_bytes(digit_png(data_dir, 3))
    body = client.post("/api/predict", content=png.read_bytes()).json()
    assert np.array_equal(np.array(body["input"]), to_mnist(load_image(png)))
    for folder, entry in zip(two_runs, body["runs"], strict=True):
        expected = predict_files(folder, [png])[0]["top"]
        assert [t["class"] for t in entry["top"]] == [t["class"] for t in expected]
        np.testing.assert_allclose([t["probability"] for t in entry["top"]],
                                   [t["probability"] for t in expected], atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(("body", "status", "fragment"), [
    (b"this is not an image", 400, "not a readable image"),
    (b"", 400, "empty request"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, 400, "the uploaded image"),
    (b"0" * (4 * 1024 * 1024 + 1), 413, "over 4 MB"),
])
def test_bad_requests_get_a_status_and_one_line(client, body, status, fragment):
    response = client.post("/api/predict", content=body)
    assert response.status_code == status
    message = response.json()["error"]
    assert fragment in message and "\n" not in message and "Traceback" not in message


@pytest.mark.slow
def test_several_requests_at_once(client, data_dir):
    from concurrent.futures import ThreadPoolExecutor

    bodies = [digit_png(data_dir, i) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: client.post("/api/predict", content=b), bodies))
    assert [a.status_code for a in answers] == [200] * 8
    # Each answer is its own digit's, not another request's.
    for body, answer in zip(bodies, answers, strict=True):
        again = client.post("/api/predict", content=body).json()
        assert answer.json()["input"] == again["input"]


@pytest.mark.slow
def test_under_load_bad_clients_and_hostile_images_hold_no_one_up(two_runs, tmp_path):
    """scripts/load_serve.py, short: 16 clients for 8 s, a client trickling its body and
    one hanging up, and each unusual image once."""
    import json
    import subprocess
    import sys

    out = tmp_path / "load.json"
    script = Path(__file__).resolve().parent.parent / "scripts" / "load_serve.py"
    subprocess.run([sys.executable, str(script), *map(str, two_runs), "--clients", "16",
                    "--seconds", "8", "--body-timeout", "2", "--requests", "0",
                    "--json", str(out)],
                   check=True, capture_output=True, timeout=300)
    figures = json.loads(out.read_text())
    load = figures["load"]
    assert load["errors"] == 0 and load["requests"] > 100, load
    assert load["max_ms"] < 2000, load
    # The trickling client is cut off at its timeout; the others did not wait for it.
    assert load["slow_client"]["status"] == "408" and load["slow_client"]["seconds"] < 4
    assert load["p99_ms_while_slow_client"] < 2000 and load["hang_up"]
    assert figures["server_alive"]
    seen = figures["images"]
    for name in images.readable():  # read as the plain seven (JPEG: within its loss)
        assert seen[name]["off_by"] <= (40 if name.endswith(".jpg") else 0), (name, seen)
    for name, (_, fragment) in images.refused().items():
        assert seen[name]["status"] == 400 and fragment in seen[name]["error"], name
        assert seen[name]["ms"] < 100, (name, seen[name])


@pytest.mark.slow
def test_unknown_routes_and_methods(client):
    assert client.get("/nope").status_code == 404
    assert "no such page: /nope" in client.get("/nope").json()["error"]
    assert client.get("/api/predict").status_code == 405
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    assert [r["type"] for r in client.get("/api/runs").json()["runs"]] == ["lstm", "cnn"]


def test_a_port_in_use_is_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = run("serve", str(tmp_path), "--port", str(port))
    assert_one_line_error(result, f"port {port}", "in use")


def test_an_unfinished_run_is_one_line(tmp_path):
    assert_one_line_error(run("serve", str(tmp_path / "missing"), "--port", "1"),
                          "no such run folder")


@pytest.mark.slow
def test_a_digit_drawn_in_chromium_is_read_by_every_run(two_runs):
    from selenium.webdriver.common.by import By

    try:
        browser = page.chromium()
    except page.NoBrowser as e:
        if os.environ.get("CI") == "true":  # CI must test the page, not skip it
            pytest.fail(f"no browser in CI: {e}")
        pytest.skip(str(e))
    port = page.free_port()
    server = page.start_server([*two_runs, "--device", "cpu"], port)
    try:
        cards = page.draw_and_read(browser, f"http://127.0.0.1:{port}/")
        assert [c["type"] for c in cards] == ["lstm", "cnn"]
        for card in cards:
            assert card["top1"] in list("0123456789")
            assert card["bars"] == 3
        assert cards[0]["canvases"]  # the rows chart
        assert cards[1]["maps"]  # feature maps
        for card in cards:  # the finished drawing's pixels that decided, answer first
            assert [s["cls"] for s in card["saliency"]][:1] == [card["top1"]], card
            assert len(card["saliency"]) == 2 and card["saliency"][0]["red"] > 10, card
        assert browser.find_element(By.ID, "status").text == ""  # no error shown
        browser.find_element(By.ID, "clear").click()
        assert not browser.find_elements(By.CSS_SELECTOR, ".run")
    finally:
        browser.quit()
        server.terminate()
        server.wait(timeout=30)
