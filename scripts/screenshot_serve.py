"""Screenshot of the serve page with a drawn 7 read by every run, for the README.

    python scripts/screenshot_serve.py RUN_DIR [RUN_DIR...] --out scripts/figures/serve.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# The server and browser helpers the tests use (tests/page.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import page  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", default="scripts/figures/serve.png")
    args = parser.parse_args()
    port = page.free_port()
    server = page.start_server(args.runs, port)
    browser = page.chromium(1400, 1000)
    try:
        cards = page.draw_and_read(browser, f"http://127.0.0.1:{port}/")
        for card in cards:
            print(card["run"], "reads", card["top1"])
        time.sleep(2)  # let the LSTM's row-by-row chart finish stepping
        browser.save_screenshot(args.out)
        print(f"Wrote {args.out}")
    finally:
        browser.quit()
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
