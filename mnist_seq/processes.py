"""Processes and signals: a child that dies with its parent, the first Ctrl-C, a port
that is free, and a distributed JAX run's training in a child process.

JAX's distributed runtime ends a process from C++ when it decides that another one is
gone (its coordinator vanished, or a process stopped sending heartbeats): a page of
log lines and an abort that Python cannot catch. So `train --distribute` on JAX runs
the training in a child process and reads its stderr: the child's own `Error:` line
becomes this process's error, the runtime's log lines are held back and, if the child
dies of what they report, said in one line (`ChildFailed`).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

from mnist_seq.errors import MnistSeqError

CHILD = "MNIST_SEQ_DISTRIBUTED_CHILD"  # set in the child: it trains instead of spawning
ERROR = "Error: "  # how mnist-seq's command line starts the line it fails with


class ChildFailed(MnistSeqError):
    """The training child ended badly; `exit_code` is the one to leave with."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def die_with_parent(parent: int | None = None) -> None:
    """In a child: be killed when the parent dies (Linux: the kernel's parent-death
    signal; elsewhere nothing). With `parent`, a child whose parent died before this
    took effect leaves at once."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:
        os._exit(1)


@contextlib.contextmanager
def first_ctrl_c(action: Callable[[], None]) -> Iterator[None]:
    """The first Ctrl-C calls `action` (and the handler it replaced, if that is a
    caller's own); a second one does what it did before, as usual. Only the main thread
    can hear signals: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        action()
        signal.signal(signal.SIGINT, previous)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, frame)

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def port_taken(host: str, port: int) -> OSError | None:
    """Why `host:port` cannot be listened on (EADDRINUSE: another program has it), or
    None. An empty host or "::" means every address of this machine."""
    family = socket.AF_INET6 if ":" in host or (not host and socket.has_ipv6) else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host or ("::" if family == socket.AF_INET6 else ""), port))
        except OSError as e:
            return e
    return None


def inside() -> bool:
    """Whether this process is the child that trains."""
    return os.environ.get(CHILD) == "1"


def run_child(argv: list[str], run_dir: str, debug: bool = False) -> None:
    """Run `mnist-seq ARGV` (training into `run_dir`) as a child; raise ChildFailed, with
    one line on why, unless it ended well. With `debug` all of its stderr passes through."""
    # A session of its own: Ctrl-C and `kill -INT`/`-TERM` reach the child once, from
    # here (its first Ctrl-C stops it after the batch, a second one at once).
    child = subprocess.Popen([sys.executable, "-m", "mnist_seq", *argv],
                             stderr=subprocess.PIPE, text=True, errors="replace",
                             env={**os.environ, CHILD: "1"}, start_new_session=True,
                             preexec_fn=die_with_parent)
    previous = {signum: signal.signal(signum, lambda sig, _frame: child.send_signal(sig))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        said, held = _read_stderr(child, debug)
        code = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if code == 0:
        return
    # mnist-seq's own codes pass through; a crash is 1.
    raise ChildFailed(said or why_it_stopped(held, code, run_dir),
                      code if code in (1, 2, 130) else 1)


def _read_stderr(child: subprocess.Popen, debug: bool) -> tuple[str | None, str]:
    """The child's own error (its `Error:` line), and the last of its other lines."""
    held = collections.deque(maxlen=200)
    said = None
    for line in child.stderr:
        if debug:
            sys.stderr.write(line)
            sys.stderr.flush()
        if line.startswith(ERROR):
            said = line[len(ERROR):].strip()
        else:
            held.append(line)
    return said, "".join(held)


def why_it_stopped(log: str, code: int, run_dir: str = "RUN_DIR") -> str:
    """One line from the runtime's log of a child that died without saying why."""
    resume = f"start every process again with --resume {run_dir}"
    timeout = re.search(r"[Tt]ask (\d+) heartbeat timeout|stopped sending heartbeats\):\s*(\d+)",
                        log)
    if timeout:
        return (f"process {timeout.group(1) or timeout.group(2)} stopped answering, so the "
                f"run stopped; {resume}")
    if re.search(r"[Ss]ocket closed|[Cc]onnection refused|coordination service", log):
        return f"lost the coordinator (process 0), so the run stopped; {resume}"
    fatal = [ln for ln in log.splitlines() if re.match(r"F\d{4} ", ln)]
    how = f"signal {-code}" if code < 0 else f"exit code {code}"
    detail = fatal[-1].split("] ", 1)[-1][:200] if fatal else "no message"
    return f"the training process ended with {how} ({detail}); --debug shows its log"
