"""Drive `mnist-seq serve` as a person does: start it, open the page in Debian's headless
Chromium (through its chromedriver: nothing is downloaded), draw on the canvas with
pointer events. Used by the browser test, scripts/screenshot_serve.py and scripts/bench_serve.py."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

INSTALL_BROWSER = "apt-get install chromium chromium-driver"
# A 7, as offsets from the centre of the 280x280 canvas.
SEVEN = [[(-70, -80), (70, -80), (10, 0), (-20, 90)]]


class NoBrowser(RuntimeError):
    """Chromium or its driver is not installed."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(runs: list[Path | str], port: int, *options: str) -> subprocess.Popen:
    """`mnist-seq serve RUN... OPTION...` on `port`; returns once it listens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnist_seq", "serve", *map(str, runs), "--port", str(port),
         *options],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = proc.stdout.readline()
    if not line.startswith("Serving"):
        proc.kill()
        raise RuntimeError(line + proc.stdout.read())
    try:
        wait_for_port(port, time.time() + 30)
    except RuntimeError:
        proc.kill()
        raise
    return proc


def wait_for_port(port: int, deadline: float) -> None:
    """Return once something listens on the local `port`."""
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listened on port {port}")


def chromium(width: int = 1280, height: int = 1000):
    """A headless Chromium session."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        raise NoBrowser(f"needs Chromium and its driver: {INSTALL_BROWSER} (as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


# What each run card shows, read in one go (the page may redraw its cards at any time).
CARDS = """return [...document.querySelectorAll('.run')].map(c => ({
  type: c.dataset.type, run: c.dataset.run, top1: c.querySelector('.top1').textContent,
  bars: c.querySelectorAll('.bar').length, canvases: c.querySelectorAll('canvas').length,
  maps: c.querySelectorAll('.maps canvas').length,
  saliency: [...c.querySelectorAll('.saliency canvas')].map(x => {
    const d = x.getContext('2d').getImageData(0, 0, 28, 28).data;
    let red = 0, blue = 0;  // pixels drawn as pushing towards the class, or against
    for (let i = 0; i < d.length; i += 4) {
      if (d[i] > d[i + 2] + 20) red++; else if (d[i + 2] > d[i] + 20) blue++;
    }
    return {cls: x.dataset.class, red, blue};
  })}));"""


# The 28x28 digit the page shows it read (its "seen" canvas), as 784 grey levels.
SEEN = """const c = document.getElementById('seen').getContext('2d');
const d = c.getImageData(0, 0, 28, 28).data;
return Array.from(d).filter((v, i) => i % 4 === 0);"""


def draw_and_read(browser, url: str, strokes=SEVEN, timeout: float = 30) -> list[dict]:
    """Open the page, draw the strokes, and wait until the last answer is shown;
    returns what each run card shows (`CARDS`)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    pad = browser.find_element(By.ID, "draw")
    for stroke in strokes:
        actions = ActionChains(browser).move_to_element_with_offset(pad, *stroke[0])
        actions.click_and_hold()
        for x, y in stroke[1:]:
            actions.move_to_element_with_offset(pad, x, y)
        actions.release().perform()
    # The page reads while drawing and once more at the end: wait for the last answer.
    WebDriverWait(browser, timeout).until(ec.presence_of_element_located(
        (By.CSS_SELECTOR, "body[data-busy='0'] .run .top1")))
    return browser.execute_script(CARDS)
