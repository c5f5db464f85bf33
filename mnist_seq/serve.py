"""`mnist-seq serve`: a local web page to draw a digit and watch each run read it.

Built on Starlette (an ASGI toolkit: routing, request bodies, a test client) served by
uvicorn. The models are loaded once, at start; each request is read in a worker
thread, one request per model at a time. `POST /api/predict` takes an image file as
the request body and answers, for every run, its top-3 digits; for an LSTM also the
probabilities after each row read, for a CNN its first convolution's feature maps; with
`?explain=1`, for every run with a Keras model, which pixels pushed it towards its answer
and the runner-up (the page asks for it once a drawing is finished).
The page (`web/index.html`) uses nothing but that API.
"""

from __future__ import annotations

import errno
import io
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnist_seq.errors import MnistSeqError
from mnist_seq.options import DEFAULT_OPTIONS, RuntimeOptions

MAX_BODY = 4 * 1024 * 1024  # bytes: a photo of a digit fits easily; more is refused (413)
# Seconds a client has to send its image: one that trickles it, or stops halfway, gets a
# 408 then, and holds no one else up meanwhile (bodies are read without blocking).
BODY_SECONDS = 10.0
TOP = 3


@dataclass
class Reader:
    """One run's model, ready to read digits: `answer` gives the model's outputs for a
    (1, 28, 28) uint8 digit, `card` those of the model behind its card
    (`kinds.Kind.reader`: the LSTM's per-row probabilities, the CNN's first convolution),
    or None."""

    name: str
    kind: str
    answer: Callable[[np.ndarray], np.ndarray]
    card: Callable[[np.ndarray], np.ndarray] | None = None
    # (28x28 uint8 digit, classes) -> each class's saliency map (`saliency.py`); None for
    # an exported file, which has no gradients.
    saliency: Callable[[np.ndarray, list[int]], np.ndarray] | None = None
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
    """Load every finished run's model (or exported file) once, with what the page shows
    of it. Keras starts only if some run is not an exported file."""
    from mnist_seq.rundir import RunDir
    from mnist_seq.runtime import is_exported

    exported = [is_exported(d) for d in run_dirs]
    runs = [None if e else RunDir(d).require_finished() for d, e in zip(run_dirs, exported,
                                                                         strict=True)]
    names = [_exported_name(Path(d)) if e else r.name
             for d, e, r in zip(run_dirs, exported, runs, strict=True)]
    if not all(exported):
        from mnist_seq import backend

        backend.setup(options)
    readers = []
    for path, run, name in zip(run_dirs, runs, names, strict=True):
        if names.count(name) > 1 and run is not None:  # folders that share a name
            name = f"{run.path.absolute().parent.name}/{run.name}"
        reader = _keras_reader(run, name) if run is not None else _exported_reader(path, name)
        # Compile now, not on the first request.
        read_digit([reader], np.zeros((28, 28), np.uint8), explain=True)
        readers.append(reader)
    return readers


def _keras_reader(run, name: str) -> Reader:
    from mnist_seq import saliency
    from mnist_seq.evaluation import fit_input, load_model
    from mnist_seq.kinds import KINDS

    config = run.read_config()
    kind = config["model"]["type"]
    model = load_model(run / run.MODEL)
    extra = KINDS[kind].reader(model, config) if KINDS[kind].reader else None
    grad = saliency.gradient_fn(model)
    return Reader(name, kind, lambda d: np.asarray(model.predict_on_batch(fit_input(model, d))),
                  None if extra is None else
                  lambda d: np.asarray(extra.predict_on_batch(fit_input(extra, d))),
                  lambda d, classes: saliency.integrated_gradients(grad, d, classes))


def _exported_reader(path: str | Path, name: str) -> Reader:
    from mnist_seq.runtime import open_exported

    model = open_exported(path)
    return Reader(name, model.kind or "model", lambda d: model.predict(d)[0],
                  None if model.card is None else lambda d: model.read_card(d[0])[None])


def _exported_name(path: Path) -> str:
    """An exported file as RUN/FILE when it lies in a run's export folder; a folder as
    PARENT/FOLDER."""
    if path.is_dir():
        return f"{path.absolute().parent.name}/{path.name}"
    if path.absolute().parent.name == "export":
        return f"{path.absolute().parent.parent.name}/{path.name}"
    return path.name


def prepare(body: bytes) -> np.ndarray:
    """An uploaded image file as a 28x28 MNIST-style digit, exactly as `predict` does."""
    from mnist_seq.predict import load_image, to_mnist

    if not body:
        raise MnistSeqError("empty request: send the image file (PNG, JPEG or BMP) as the "
                            "request body")
    return to_mnist(load_image(io.BytesIO(body), "the uploaded image"))


def read_digit(readers: list[Reader], digit: np.ndarray, explain: bool = False
               ) -> dict[str, Any]:
    """What every run makes of one 28x28 uint8 digit; with `explain`, also which pixels
    pushed it towards its answer and the runner-up."""
    from mnist_seq import saliency
    from mnist_seq.kinds import KINDS

    runs = []
    for r in readers:
        with r.lock:  # one request at a time per model; other models run meanwhile
            probs = r.answer(digit[None])[0]
            extra = None if r.card is None else r.card(digit[None])[0]
            order = [int(c) for c in np.argsort(-probs)[:TOP]]
            maps = r.saliency(digit, order[:2]) if explain and r.saliency else None
        entry = {"name": r.name, "type": r.kind,
                 "top": [{"class": c, "probability": round(float(probs[c]), 5)}
                         for c in order]}
        if extra is not None:
            entry |= KINDS[r.kind].card(extra)
        if maps is not None:
            entry |= saliency.card(order[:2], maps)
        runs.append(entry)
    return {"input": digit.tolist(), "runs": runs}


def make_app(readers: list[Reader], body_seconds: float = BODY_SECONDS):
    """The Starlette app: the page, `GET /api/runs`, `POST /api/predict`."""
    import anyio
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    from mnist_seq.web_export import page_text

    page = page_text("index.html")
    # The page's scripts: the pad (shared with the exported page), and the reader that
    # sends each drawing to this server.
    scripts = {"/pad.js": page_text("pad.js"), "/reader.js": page_text("serve.js")}

    async def index(request):
        return HTMLResponse(page)

    async def script(request):
        return Response(scripts[request.url.path], media_type="text/javascript")

    async def runs(request):
        return JSONResponse({"runs": [{"name": r.name, "type": r.kind} for r in readers]})

    async def predict(request):
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY:
            return _error(413, f"the image is over {MAX_BODY // 2**20} MB")
        body = bytearray()
        try:
            with anyio.fail_after(body_seconds):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > MAX_BODY:
                        return _error(413, f"the image is over {MAX_BODY // 2**20} MB")
        except TimeoutError:
            return _error(408, f"the image did not arrive within {body_seconds:g} s")
        except ClientDisconnect:  # hung up halfway: there is no one to answer
            return Response(status_code=400)
        try:
            digit = await run_in_threadpool(prepare, bytes(body))
            explain = request.query_params.get("explain") == "1"
            return JSONResponse(await run_in_threadpool(read_digit, readers, digit, explain))
        except MnistSeqError as e:
            return _error(400, str(e))

    async def http_error(request, exc: HTTPException):
        what = {404: f"no such page: {request.url.path}",
                405: f"{request.method} is not allowed on {request.url.path}"}
        return _error(exc.status_code, what.get(exc.status_code, str(exc.detail)))

    return Starlette(routes=[Route("/", index), *(Route(path, script) for path in scripts),
                             Route("/api/runs", runs),
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
          log=print, body_seconds: float = BODY_SECONDS) -> None:
    """Load the runs, then serve the page until Ctrl-C (`body_seconds`: how long a client
    has to send its image)."""
    import uvicorn

    check_port(host, port)
    readers = load_readers(run_dirs, options)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
    server = uvicorn.Server(uvicorn.Config(make_app(readers, body_seconds), host=host, port=port,
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
