"""Run one process of a distributed JAX run as a child, so that however it ends, the
user reads one line.

JAX's distributed runtime ends a process from C++ when it decides that another one is
gone (its coordinator vanished, or a process stopped sending heartbeats): a page of
log lines and an abort that Python cannot catch. So `train --distribute` on JAX runs
the training in a child process and reads its stderr: the child's own `Error:` lines
pass through, the runtime's log lines are held back and, if the child dies of what
they report, said in one line. The child dies with this process (a kill of the
command stops the training too).
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys

CHILD = "MNIST_SEQ_DISTRIBUTED_CHILD"  # set in the child: it trains instead of spawning


def inside() -> bool:
    """Whether this process is the child that trains."""
    return os.environ.get(CHILD) == "1"


def run(argv: list[str], run_dir: str, debug: bool = False) -> int:
    """Run `mnist-seq ARGV` (training into `run_dir`) as a child and return the exit code
    to leave with; every way it fails ends in one `Error:` line on stderr (all of stderr
    with `debug`)."""
    # A session of its own: Ctrl-C and `kill -INT`/`-TERM` reach the child once, from
    # here (its first Ctrl-C stops it after the batch, a second one at once).
    child = subprocess.Popen([sys.executable, "-m", "mnist_seq", *argv],
                             stderr=subprocess.PIPE, text=True, errors="replace",
                             env={**os.environ, CHILD: "1"}, start_new_session=True,
                             preexec_fn=_die_with_parent)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda sig, _frame: child.send_signal(sig))
    held = collections.deque(maxlen=200)
    said = False
    for line in child.stderr:
        if debug or line.startswith("Error: "):
            sys.stderr.write(line)
            sys.stderr.flush()
            said = said or line.startswith("Error: ")
        else:
            held.append(line)
    code = child.wait()
    if code == 0:
        return 0
    if not said:
        sys.stderr.write(f"Error: {why_it_stopped(''.join(held), code, run_dir)}\n")
    return code if code in (1, 2, 130) else 1  # mnist-seq's own codes; a crash is 1


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


def _die_with_parent() -> None:
    """In the child, before it starts: be killed when the parent dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
