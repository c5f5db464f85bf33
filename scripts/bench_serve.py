"""Round-trip time of one prediction through `mnist-seq serve`, from a client's side.

    python scripts/bench_serve.py RUN_DIR [RUN_DIR...] --requests 200

Starts the server on a free port, then POSTs the same drawn digit (a 280x280 PNG, as
the page's canvas sends it) one request after another and prints the median, the
90th percentile and the range in milliseconds. With --explain, every other request asks
for the pixels that decided too (`?explain=1`, as the page does once a drawing is
finished), and each kind is reported.
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
    parser.add_argument("--explain", action="store_true",
                        help="alternate plain and explained requests")
    args = parser.parse_args()
    port = page.free_port()
    server = page.start_server(args.runs, port)
    paths = ["/api/predict", "/api/predict?explain=1"] if args.explain else ["/api/predict"]
    body, times = drawn_seven(), {path: [] for path in paths}
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port)
        for i in range(len(paths) * (args.requests + 5)):  # the first five of each warm up
            path = paths[i % len(paths)]
            start = time.perf_counter()
            connection.request("POST", path, body=body)
            response = connection.getresponse()
            response.read()
            assert response.status == 200, response.status
            times[path].append(1000 * (time.perf_counter() - start))
    finally:
        server.terminate()
        server.wait(timeout=30)
    for path, taken in times.items():
        taken = taken[5:]
        print(f"{path}: {args.requests} round trips, {len(args.runs)} runs: median "
              f"{statistics.median(taken):.1f} ms, 90th percentile "
              f"{np.percentile(taken, 90):.1f} ms, range {min(taken):.1f}-{max(taken):.1f} ms")


if __name__ == "__main__":
    main()
