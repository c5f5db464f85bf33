"""Round-trip time of one prediction through `mnist-seq serve`, from a client's side.

    python scripts/bench_serve.py RUN_DIR [RUN_DIR...] --requests 200

Starts the server on a free port, then POSTs the same drawn digit (a 280x280 PNG, as
the page's canvas sends it) one request after another and prints the median, the
90th percentile and the range in milliseconds.
"""

from __future__ import annotations

import argparse
import http.client
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# The server and browser helpers the tests use (tests/page.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import page  # noqa: E402


def drawn_seven() -> bytes:
    """A 7 drawn white on black at the canvas's size, with its line width."""
    img = Image.new("L", (280, 280), 0)
    ImageDraw.Draw(img).line([(70, 60), (210, 60), (150, 140), (120, 230)], fill=255,
                             width=20, joint="curve")
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    port = page.free_port()
    server = page.start_server(args.runs, port)
    body, times = drawn_seven(), []
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port)
        for _ in range(args.requests + 5):  # the first five warm up
            start = time.perf_counter()
            connection.request("POST", "/api/predict", body=body)
            response = connection.getresponse()
            response.read()
            assert response.status == 200, response.status
            times.append(1000 * (time.perf_counter() - start))
    finally:
        server.terminate()
        server.wait(timeout=30)
    times = times[5:]
    print(f"{args.requests} round trips, {len(args.runs)} runs: median "
          f"{statistics.median(times):.1f} ms, 90th percentile "
          f"{np.percentile(times, 90):.1f} ms, range {min(times):.1f}-{max(times):.1f} ms")


if __name__ == "__main__":
    main()
