"""`mnist-seq serve`: a local web page to draw a digit and watch each run read it.

Built on Starlette (an ASGI toolkit: routing, request bodies, a test client) served by
uvicorn. The models are loaded once, at start; each request is read in a worker
thread, one request per model at a time. `POST /api/predict` takes an image file as
the request body and answers, for every run, its top-3 digits; for an LSTM also the
probabilities after each row read, for a CNN its first convolution's feature maps.
The page (`web/index.html`) uses nothing but that API.
"""

from __future__ import annotations

import errno
import io
import socket
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from mnist_seq.errors import MnistSeqError
from mnist_seq.options import DEFAULT_OPTIONS, RuntimeOptions

MAX_BODY = 4 * 1024 * 1024  # bytes: a photo of a digit fits easily; more is refused (413)
TOP = 3


@dataclass
class Reader:
    """One run's model, ready to read digits: `extra` is the model behind its card
    (`kinds.Kind.reader`: the LSTM's per-row probabilities, the CNN's first convolution),
    or None."""

    name: str
    kind: str
    model: Any
    extra: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def require_web() -> None:
    """The page needs the web extra."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise MnistSeqError("serve needs Starlette and uvicorn: pip install "
                            "'mnist-seq[serve]'") from None


def load_readers(run_dirs: list[str | Path],
                 options: RuntimeOptions = DEFAULT_OPTIONS) -> list[Reader]:
    """Load every finished run's model once, with what the page shows of it."""
    from mnist_seq import backend
    from mnist_seq.evaluation import load_model
    from mnist_seq.rundir import RunDir

    runs = [RunDir(d).require_finished() for d in run_dirs]
    backend.setup(options)
    from mnist_seq.kinds import KINDS

    # Runs are named by their folder, or by its last two parts where folders share a name.
    shared = {r.name for r in runs if [x.name for x in runs].count(r.name) > 1}
    readers = []
    for run in runs:
        config = run.read_config()
        kind = config["model"]["type"]
        model = load_model(run / RunDir.MODEL)
        reader = KINDS[kind].reader
        extra = reader(model, config) if reader else None
        name = f"{run.path.absolute().parent.name}/{run.name}" if run.name in shared else run.name
        reader = Reader(name, kind, model, extra)
        read_digit([reader], np.zeros((28, 28), np.uint8))  # compile now, not on request 1
        readers.append(reader)
    return readers


def prepare(body: bytes) -> np.ndarray:
    """An uploaded image file as a 28x28 MNIST-style digit, exactly as `predict` does."""
    from mnist_seq.predict import load_image, to_mnist

    if not body:
        raise MnistSeqError("empty request: send the image file (PNG, JPEG or BMP) as the "
                            "request body")
    return to_mnist(load_image(io.BytesIO(body), "the uploaded image"))


def read_digit(readers: list[Reader], digit: np.ndarray) -> dict[str, Any]:
    """What every run makes of one 28x28 uint8 digit."""
    from mnist_seq.evaluation import fit_input
    from mnist_seq.kinds import KINDS

    runs = []
    for r in readers:
        with r.lock:  # one request at a time per model; other models run meanwhile
            probs = np.asarray(r.model.predict_on_batch(fit_input(r.model, digit[None])))[0]
            extra = None if r.extra is None else np.asarray(
                r.extra.predict_on_batch(fit_input(r.extra, digit[None])))[0]
        order = np.argsort(-probs)[:TOP]
        entry = {"name": r.name, "type": r.kind,
                 "top": [{"class": int(c), "probability": round(float(probs[c]), 5)}
                         for c in order]}
        if extra is not None:
            entry |= KINDS[r.kind].card(extra)
        runs.append(entry)
    return {"input": digit.tolist(), "runs": runs}


def make_app(readers: list[Reader]):
    """The Starlette app: the page, `GET /api/runs`, `POST /api/predict`."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    page = resources.files("mnist_seq").joinpath("web/index.html").read_text(encoding="utf-8")

    async def index(request):
        return HTMLResponse(page)

    async def runs(request):
        return JSONResponse({"runs": [{"name": r.name, "type": r.kind} for r in readers]})

    async def predict(request):
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY:
            return _error(413, f"the image is over {MAX_BODY // 2**20} MB")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return _error(413, f"the image is over {MAX_BODY // 2**20} MB")
        try:
            digit = await run_in_threadpool(prepare, bytes(body))
            return JSONResponse(await run_in_threadpool(read_digit, readers, digit))
        except MnistSeqError as e:
            return _error(400, str(e))

    async def http_error(request, exc: HTTPException):
        what = {404: f"no such page: {request.url.path}",
                405: f"{request.method} is not allowed on {request.url.path}"}
        return _error(exc.status_code, what.get(exc.status_code, str(exc.detail)))

    return Starlette(routes=[Route("/", index), Route("/api/runs", runs),
                             Route("/api/predict", predict, methods=["POST"])],
                     exception_handlers={HTTPException: http_error})


def _error(status: int, message: str):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


def check_port(host: str, port: int) -> None:
    """Say at once, in one line, when the address cannot be served."""
    from mnist_seq.processes import port_taken

    e = port_taken(host, port)
    if e is not None and e.errno == errno.EADDRINUSE:
        raise MnistSeqError(f"port {port} on {host} is in use; pick another with --port")
    if e is not None:
        raise MnistSeqError(f"cannot serve on {host}:{port}: {e.strerror or e}")


def serve(run_dirs: list[str | Path], host: str = "127.0.0.1", port: int = 8000,
          open_browser: bool = False, options: RuntimeOptions = DEFAULT_OPTIONS,
          log=print) -> None:
    """Load the runs, then serve the page until Ctrl-C."""
    import uvicorn

    check_port(host, port)
    readers = load_readers(run_dirs, options)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
    server = uvicorn.Server(uvicorn.Config(make_app(readers), host=host, port=port,
                                           log_level="warning", access_log=False))
    names = ", ".join(f"{r.name} ({r.kind})" for r in readers)
    log(f"Serving {names} at {url} (Ctrl-C stops)")
    if host in ("0.0.0.0", "::"):
        log(f"Reachable from the network too: http://{socket.gethostname()}:{port}/ "
            "(anyone who can reach this machine can use it)")
    if open_browser:
        import webbrowser

        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    server.run()
