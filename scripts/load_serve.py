"""`mnist-seq serve` under load and bad clients, measured from outside.

    python scripts/load_serve.py RUN_DIR [RUN_DIR...] --clients 64 --seconds 60

Starts the server on a free port and first sends, one at a time, the hostile and unusual
images of tests/images.py (each refused or read, and how fast). Then `--clients` clients
each POST a drawn digit over and over for `--seconds`, while one client sends its body a
byte a second and another hangs up halfway, and on past `--seconds` until `--requests`
have been answered. Prints, and with --json writes: requests,
errors, the p50, p99 and slowest round trip, the server's resident memory after the first
100 and after 10,000 requests, and what became of the bad clients.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import images  # noqa: E402
import page  # noqa: E402

MEMORY_AT = (100, 10_000)  # requests after which the server's memory is read


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def post(port: int, body: bytes, connection=None) -> tuple[int, float, dict]:
    """POST one image; (status, milliseconds, JSON answer)."""
    connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    start = time.perf_counter()
    connection.request("POST", "/api/predict", body=body)
    response = connection.getresponse()
    answer = json.loads(response.read() or b"{}")
    return response.status, 1000 * (time.perf_counter() - start), answer


def single_images(port: int) -> dict[str, dict]:
    """Each unusual or hostile image once, on an idle server."""
    seen, plain = {}, None
    for name, body in images.readable().items():  # gray.png, the plain one, first
        status, ms, answer = post(port, body)
        digit = np.array(answer["input"]) if status == 200 else None
        plain = digit if plain is None else plain
        seen[name] = {"status": status, "ms": round(ms, 1),
                      # how far the 28x28 digit the models saw is from the plain one's
                      "off_by": None if digit is None else int(np.abs(digit - plain).max()),
                      "answers": None if digit is None else
                      [r["top"][0]["class"] for r in answer["runs"]]}
    for name, (body, _) in images.refused().items():
        status, ms, answer = post(port, body)
        seen[name] = {"status": status, "ms": round(ms, 1), "error": answer.get("error")}
    return seen


class Load:
    """Clients posting one digit as fast as answers come, and what they measured."""

    def __init__(self, port: int, pid: int, body: bytes):
        self.port, self.pid, self.body = port, pid, body
        self.times: list[tuple[float, float]] = []  # (when it ended, milliseconds)
        self.errors: list[str] = []
        self.memory: dict[int, float] = {}
        self.lock = threading.Lock()

    def client(self, until: float, at_least: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        while time.time() < until or len(self.times) < at_least:
            try:
                status, ms, _ = post(self.port, self.body, connection)
            except (OSError, http.client.HTTPException) as e:
                with self.lock:
                    self.errors.append(f"{e.__class__.__name__}: {e}")
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                continue
            with self.lock:
                if status != 200:
                    self.errors.append(f"status {status}")
                self.times.append((time.time(), ms))
                if len(self.times) in MEMORY_AT:
                    self.memory[len(self.times)] = round(rss_mb(self.pid), 1)


def slow_client(port: int, size: int, out: dict) -> None:
    """Send the headers of a `size`-byte body, then one byte a second."""
    start = time.time()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n"
                  "\r\n".encode())
        s.settimeout(1.0)
        reply = b""
        for _ in range(size):
            try:
                s.sendall(b"\0")
                reply += s.recv(4096)
                if reply:
                    break
            except TimeoutError:
                continue
            except OSError:
                break
    out |= {"status": reply.split(b" ", 2)[1].decode() if reply else None,
            "seconds": round(time.time() - start, 1)}


def hang_up(port: int, body: bytes, out: dict) -> None:
    """Send half a body and close the connection."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                  "\r\n".encode() + body[: len(body) // 2])
    out["hung_up"] = True


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 \
        else values[0]


def run_load(port: int, pid: int, clients: int, seconds: float, body_timeout: float,
             at_least: int) -> dict:
    load = Load(port, pid, images.encoded(images.seven()))
    began = time.time()
    until = began + seconds
    threads = [threading.Thread(target=load.client, args=(until, at_least))
               for _ in range(clients)]
    slow, gone = {}, {}
    # The bad clients start once the load is on, and the slow one is over before the end.
    bad_start = time.time() + min(5.0, seconds / 4)
    bad = [threading.Timer(bad_start - time.time(), slow_client, (port, 10_000, slow)),
           threading.Timer(bad_start - time.time(), hang_up, (port, load.body, gone))]
    for t in threads + bad:
        t.start()
    for t in threads + bad:
        t.join()
    seconds = time.time() - began
    ms = [m for _, m in load.times]
    while_slow = [m for end, m in load.times if bad_start <= end <= bad_start + body_timeout]
    return {
        "clients": clients, "seconds": round(seconds, 1), "requests": len(ms),
        "requests_per_second": round(len(ms) / seconds, 1), "errors": len(load.errors),
        "first_errors": load.errors[:3], "p50_ms": round(statistics.median(ms), 1),
        "p99_ms": round(percentile(ms, 99), 1), "max_ms": round(max(ms), 1),
        "p99_ms_while_slow_client": round(percentile(while_slow, 99), 1) if while_slow else None,
        "rss_mb": {str(k): v for k, v in sorted(load.memory.items())},
        "slow_client": slow, "hang_up": gone,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--body-timeout", type=float, default=10)
    parser.add_argument("--requests", type=int, default=MEMORY_AT[-1],
                        help="Go on past --seconds until this many requests were answered "
                             "(the memory is read after 10,000).")
    parser.add_argument("--json", metavar="FILE", help="Write the figures here too.")
    args = parser.parse_args()
    from mnist_seq.machine import cpu

    port = page.free_port()
    server = page.start_server(args.runs, port, "--body-timeout", str(args.body_timeout))
    try:
        figures = {"cpu": cpu().as_dict(), "runs": args.runs,
                   "rss_mb_idle": round(rss_mb(server.pid), 1), "images": single_images(port),
                   "load": run_load(port, server.pid, args.clients, args.seconds,
                                    args.body_timeout, args.requests)}
        figures["server_alive"] = server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
