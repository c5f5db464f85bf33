"""The static draw-a-digit page of `mnist-seq export --format web`: serve's own page
(`web/index.html`, `web/pad.js`) with a reader that runs the model in the browser
through ONNX Runtime Web, and prepares the digit as `predict` does (`web/mnist.js`).

ONNX Runtime Web comes from the npm registry (`npm pack`, once, into a cache folder):
it is 14 MB of WebAssembly that no Python package ships.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from mnist_seq.errors import MnistSeqError, first_line
from mnist_seq.options import cache_root

ORT_WEB = "onnxruntime-web@1.30.0"
# What the page loads of it: the WebAssembly build (no WebGL or WebGPU), as an ES module.
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
PAGE_FILES = ("index.html", "pad.js")  # the same files serve's page is made of
READER = "reader.js"  # what each page reads digits with: serve's API, or the model here


def cache_dir() -> Path:
    """Where the npm package is kept, under `options.cache_root()`."""
    return cache_root() / ORT_WEB.replace("@", "-")


def runtime_files() -> list[Path]:
    """ONNX Runtime Web's files, fetched with npm the first time."""
    folder = cache_dir()
    if not all((folder / name).is_file() for name in ORT_FILES):
        _fetch(folder)
    return [folder / name for name in ORT_FILES]


def _fetch(folder: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise MnistSeqError(f"the web format needs {ORT_WEB} from the npm registry and npm is "
                            f"not installed: install Node.js, or put {', '.join(ORT_FILES)} "
                            f"(from the package's dist/) into {folder}")
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([npm, "pack", ORT_WEB, "--silent"], cwd=tmp, capture_output=True,
                              text=True, timeout=600)
        packs = list(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or not packs:
            raise MnistSeqError(f"npm pack {ORT_WEB} failed: "
                                f"{first_line(done.stderr or done.stdout or 'no package')}")
        with tarfile.open(packs[0]) as tar:
            staging = Path(tmp) / "files"
            for name in ORT_FILES:
                member = tar.getmember(f"package/dist/{name}")
                tar.extract(member, staging, filter="data")
        folder.mkdir(parents=True, exist_ok=True)
        for name in ORT_FILES:
            shutil.move(staging / "package" / "dist" / name, folder / name)


def page_text(name: str) -> str:
    """One of the page's files from the package."""
    return resources.files("mnist_seq").joinpath(f"web/{name}").read_text(encoding="utf-8")


def write_page(folder: Path, meta: dict[str, Any]) -> None:
    """The page, its reader and ONNX Runtime Web into `folder` (which holds the model)."""
    for name in PAGE_FILES:
        (folder / name).write_text(page_text(name), encoding="utf-8")
    (folder / READER).write_text(page_text("mnist.js") + "\n" + page_text("local.js"),
                                 encoding="utf-8")
    (folder / "model.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    for path in runtime_files():
        shutil.copyfile(path, folder / path.name)
