"""Sweeps on Optuna: a small sweep with two workers on SQLite, continuing after a kill,
two machines (processes) sharing one PostgreSQL study, grids, pruning, and every spec
mistake as one line with exit code 2."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_cli import assert_one_line_error, run

pytest.importorskip("optuna")

PG_BIN = Path("/usr/lib/postgresql/15/bin")
# Tiny trials: 300 training samples, two quick epochs, the test set cut to 200.
TINY = {"train.epochs": 2, "data.max_train_samples": 300, "data.max_test_samples": 200,
        "train.validation_fraction": 0.2}


SEARCH = {"train.learning_rate": {"log_uniform": [1e-3, 1e-2]},
          "model.hidden": {"choice": [[16], [32]]}}


def write_spec(folder: Path, name: str = "spec", **spec) -> Path:
    """A spec file; a key given as None is left out."""
    spec = {"base": "mlp", "trials": 4, "seed": 0, "set": dict(TINY),
            **({} if "grid" in spec else {"search": SEARCH}), **spec}
    spec = {k: v for k, v in spec.items() if v is not None}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def sweep(spec: Path, *args: str, data_dir: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "mnist_seq", "sweep", str(spec), "--data-dir", str(data_dir),
         "--device", "cpu", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **popen)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    return out


def trials_in(folder: Path) -> dict[int, dict]:
    return {json.loads(p.read_text())["trial"]: json.loads(p.read_text())
            for p in folder.glob("trial-*/trial.json")}


def study_states(folder: Path, storage: str | None = None, name: str = "spec") -> list[str]:
    import optuna

    study = optuna.load_study(study_name=name, storage=storage or f"sqlite:///{folder}/study.db")
    return [t.state.name for t in study.get_trials()]


@pytest.mark.slow
def test_small_sweep_with_two_workers(data_dir, tmp_path):
    spec, folder = write_spec(tmp_path), tmp_path / "sweep"
    out = finish(sweep(spec, "--sweep-dir", str(folder), "--workers", "2", data_dir=data_dir))
    trials = trials_in(folder)
    assert sorted(trials) == [0, 1, 2, 3] and {t["state"] for t in trials.values()} == {
        "complete"}
    assert study_states(folder) == ["COMPLETE"] * 4
    best = json.loads((folder / "best.json").read_text())
    assert best["val_accuracy"] == max(t["value"] for t in trials.values())
    assert f"Best trial {best['trial']}" in out and 0 < best["test_accuracy"] <= 1
    # Only the best trial's model met the test set.
    scored = [p.parent.name for p in folder.glob("trial-*/evaluation.json")]
    assert scored == [f"trial-{best['trial']:04d}"]
    assert all(json.loads(p.read_text())["test_accuracy"] is None
               for p in folder.glob("trial-*/metrics.json"))
    # best.yaml is a config train accepts, holding the best trial's settings.
    config = yaml.safe_load((folder / "best.yaml").read_text())
    assert config["model"]["hidden"] == best["params"]["model.hidden"]
    assert config["train"]["epochs"] == 2
    for picture in ("history.png", "params.png", "best-curves.png"):
        assert (folder / picture).stat().st_size > 5000, picture
    # Each trial is a normal run folder, listed best first with its settings.
    listing = run("runs", str(folder))
    assert listing.exit_code == 0, listing.output
    lines = listing.output.splitlines()
    assert "train.learning_rate" in lines[0] and "model.hidden" in lines[0]
    assert lines[1].startswith(f"trial-{best['trial']:04d}")
    values = [float(line.split()[2].rstrip("%")) for line in lines[1:]]
    assert values == sorted(values, reverse=True)
    report = run("plot-history", str(folder / "trial-0000"))
    assert report.exit_code == 0, report.output


@pytest.mark.slow
def test_a_killed_sweep_continues_to_the_requested_trials(data_dir, tmp_path):
    spec, folder = write_spec(tmp_path, trials=5), tmp_path / "sweep"
    proc = sweep(spec, "--sweep-dir", str(folder), "--workers", "2", data_dir=data_dir,
                 start_new_session=True)
    deadline = time.time() + 240
    while sum(t["state"] == "complete" for t in trials_in(folder).values()) < 2:
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {n: (folder / f"trial-{n:04d}" / "metrics.json").stat().st_mtime_ns
              for n, t in trials_in(folder).items() if t["state"] == "complete"}
    out = finish(sweep(spec, "--sweep-dir", str(folder), "--workers", "2", data_dir=data_dir))
    assert "trials finished" in out
    trials = trials_in(folder)
    complete = [n for n, t in trials.items() if t["state"] == "complete"]
    assert len(complete) == 5
    for n, mtime in before.items():  # finished trials are kept as they were, not run again
        assert (folder / f"trial-{n:04d}" / "metrics.json").stat().st_mtime_ns == mtime
    states = study_states(folder)
    assert states.count("COMPLETE") == 5 and set(states) <= {"COMPLETE", "FAIL"}
    assert "RUNNING" not in states


@pytest.mark.slow
def test_a_grid_tries_every_combination_once(data_dir, tmp_path):
    grid = {"train.learning_rate": [2e-3, 5e-3], "model.dropout": [0.0, 0.2]}
    spec = write_spec(tmp_path, grid=grid, trials=None)
    folder = tmp_path / "grid"
    finish(sweep(spec, "--sweep-dir", str(folder), data_dir=data_dir))
    tried = sorted((t["params"]["train.learning_rate"], t["params"]["model.dropout"])
                   for t in trials_in(folder).values())
    assert tried == sorted(itertools.product(*grid.values()))


@pytest.mark.slow
def test_pruning_stops_hopeless_trials_early(data_dir, tmp_path):
    # Half the grid cannot learn (a learning rate of 1e-7); once two trials have finished,
    # such a trial falls below the median after its second epoch of four. (The median
    # pruner may stop a weaker one of the others too: that is its rule.)
    grid = {"train.learning_rate": [1e-7, 5e-3], "model.dropout": [0.0, 0.1, 0.2, 0.3]}
    spec = write_spec(tmp_path, grid=grid, trials=8, set={**TINY, "train.epochs": 4})
    folder = tmp_path / "pruned"
    out = finish(sweep(spec, "--sweep-dir", str(folder), "--prune", data_dir=data_dir))
    trials = trials_in(folder).values()
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert pruned and "pruned after epoch" in out
    assert any(t["params"]["train.learning_rate"] == 1e-7 for t in pruned)
    best = json.loads((folder / "best.json").read_text())
    assert best["params"]["train.learning_rate"] == 5e-3
    for t in pruned:
        folder_rows = json.loads((folder / f"trial-{t['trial']:04d}" / "history.json")
                                 .read_text())
        assert len(folder_rows) < 4
    listing = run("runs", str(folder))
    assert "pruned" in listing.output


def _postgres_runner() -> list[str] | None:
    """How to run a command as the postgres user, or None."""
    if not (PG_BIN / "initdb").exists():
        return None
    if os.geteuid() == 0 and shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--"]
    try:
        import pwd

        return [] if pwd.getpwuid(os.geteuid()).pw_name == "postgres" else None
    except KeyError:
        return None


@pytest.fixture
def postgres():
    """A PostgreSQL 15 server in a temporary folder, run as the postgres user."""
    import tempfile

    pytest.importorskip("psycopg")
    runner = _postgres_runner()
    if runner is None:
        pytest.skip(f"needs PostgreSQL 15 at {PG_BIN} and root (to run it as postgres)")
    # Outside pytest's folders, which the postgres user may not enter.
    base = Path(tempfile.mkdtemp(prefix="mnist-seq-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    if runner:
        for path in (base, sock):
            shutil.chown(path, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*runner, str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U",
                    "postgres"], check=True, capture_output=True)
    subprocess.run([*runner, str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-l",
                    str(base / "log"), "-o", f"-p {port} -k {sock} -c listen_addresses=127.0.0.1",
                    "start"], check=True, capture_output=True)
    try:
        subprocess.run([*runner, str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port),
                        "-U", "postgres", "sweeps"], check=True, capture_output=True)
        yield f"postgresql://postgres@127.0.0.1:{port}/sweeps"
    finally:
        subprocess.run([*runner, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_two_machines_share_one_postgresql_study(postgres, data_dir, tmp_path):
    spec = write_spec(tmp_path)
    procs = [sweep(spec, "--sweep-dir", str(tmp_path / f"machine-{i}"), "--storage", postgres,
                   "--study", "shared", data_dir=data_dir) for i in range(2)]
    outs = [finish(p) for p in procs]
    states = study_states(tmp_path, postgres, "shared")
    assert states.count("COMPLETE") == 4 and "RUNNING" not in states
    ran = [trials_in(tmp_path / f"machine-{i}") for i in range(2)]
    assert all(ran), "each machine ran trials of the shared study"
    assert sorted(n for r in ran for n in r) == sorted(set(n for r in ran for n in r))
    assert all("Best trial" in out for out in outs)
    assert "postgres:" not in " ".join(outs)  # no password or user:secret echoed


def test_a_database_that_cannot_be_reached_is_one_line(tmp_path, data_dir):
    spec = write_spec(tmp_path)
    result = run("sweep", str(spec), "--sweep-dir", str(tmp_path / "s"), "--data-dir",
                 str(data_dir), "--storage", "postgresql://someone:secret@127.0.0.1:9/none")
    assert_one_line_error(result, "cannot open the study storage", code=1)
    assert "secret" not in result.output


SPEC_MISTAKES = {
    "unknown spec key": ({"trails": 3}, "unknown sweep spec key 'trails'"),
    "unknown config key": ({"search": {"train.learnin_rate": {"uniform": [0.1, 0.2]}}},
                           "unknown config key"),
    "empty range": ({"search": {"model.dropout": {"uniform": [0.2, 0.2]}}}, "empty or reversed"),
    "reversed range": ({"search": {"train.batch_size": {"int": [256, 64]}}},
                       "empty or reversed"),
    "wrong type": ({"search": {"train.epochs": {"uniform": [1.0, 3.0]}}}, "train.epochs"),
    "text for a number": ({"search": {"model.dropout": {"uniform": ["a", 0.3]}}},
                          "two numbers"),
    "unknown distribution": ({"search": {"model.dropout": {"gaussian": [0, 1]}}},
                             "expected exactly one distribution"),
    "out of the config's range": ({"search": {"model.dropout": {"uniform": [0.0, 1.5]}}},
                                  "model.dropout"),
    "empty choice": ({"search": {"model.hidden": {"choice": []}}}, "non-empty list"),
    "both search and grid": ({"grid": {"model.dropout": [0.1]}, "search": SEARCH},
                             "not both"),
    "grid smaller than trials": ({"grid": {"model.dropout": [0.1, 0.2]}, "trials": 3},
                                 "more than the grid"),
    "no trials": ({"trials": 0}, "trials"),
    "unknown base": ({"base": "lstmm"}, "neither a bundled config"),
    "bad set": ({"set": {"train.epochs": "many"}}, "train.epochs"),
}


@pytest.mark.parametrize("case", SPEC_MISTAKES, ids=list(SPEC_MISTAKES))
def test_spec_mistakes_are_one_line_and_exit_2(case, tmp_path):
    change, fragment = SPEC_MISTAKES[case]
    spec = write_spec(tmp_path, **change)
    folder = tmp_path / "sweep"
    result = run("sweep", str(spec), "--sweep-dir", str(folder))
    assert_one_line_error(result, fragment, code=2)
    assert not folder.exists()  # nothing made


def test_a_folder_of_another_sweep_is_refused(tmp_path, data_dir):
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "sweep.json").write_text(json.dumps({"spec": {"other": 1}, "storage": "x"}))
    before = (folder / "sweep.json").read_text()
    result = run("sweep", str(write_spec(tmp_path)), "--sweep-dir", str(folder))
    assert_one_line_error(result, "another spec", code=1)
    assert (folder / "sweep.json").read_text() == before
