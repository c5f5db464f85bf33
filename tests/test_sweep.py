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


# Trials long enough to be killed inside: 4 epochs of 3,000 samples.
LONGER = {**TINY, "train.epochs": 4, "data.max_train_samples": 3000}

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


def when_training(proc: subprocess.Popen, after: float, deadline: float = 300) -> str:
    """Return `after` seconds past the sweep's first trained epoch, with what it said."""
    import selectors

    out, trained, stop = "", None, time.time() + deadline
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while trained is None or time.time() < trained + after:
            assert proc.poll() is None and time.time() < stop, out
            if sel.select(0.05):
                out += proc.stdout.readline()
                if trained is None and ": epoch 1/" in out:
                    trained = time.time()
    return out


def kill_when_training(proc: subprocess.Popen, after: float) -> str:
    """SIGKILL the sweep's whole process group `after` seconds past its first trained
    epoch; returns what it said."""
    out = when_training(proc, after)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return out + proc.stdout.read()


def epochs_said(out: str) -> list[tuple[int, int]]:
    """(trial, epoch) of each "trial N: epoch k/E" line: an epoch's line comes after its
    checkpoint is saved, so a trial that is continued never says an epoch twice."""
    import re

    return [(int(t), int(e)) for t, e in re.findall(r"trial (\d+): epoch (\d+)/", out)]


@pytest.mark.slow
def test_a_sweep_killed_three_times_trains_each_trial_once(data_dir, tmp_path):
    import random

    spec, folder = write_spec(tmp_path, trials=6, set=LONGER), tmp_path / "sweep"
    args = (spec, "--sweep-dir", str(folder), "--workers", "2")
    outs = [kill_when_training(sweep(*args, data_dir=data_dir, start_new_session=True),
                               after=random.Random(i).uniform(0, 1.5)) for i in range(3)]
    outs.append(finish(sweep(*args, data_dir=data_dir)))
    assert "to continue" in "".join(outs[1:])  # a later command took up a killed trial
    said = [pair for out in outs for pair in epochs_said(out)]
    assert sorted(said) == sorted(set(said)), "an epoch was trained twice"
    # Exactly 6 run folders, each trained once through its 4 epochs, all complete.
    folders = sorted(folder.glob("trial-*"))
    assert len(folders) == 6, folders
    for run_folder in folders:
        rows = json.loads((run_folder / "history.json").read_text())
        assert [r["epoch"] for r in rows] == [0, 1, 2, 3], run_folder
    trials = trials_in(folder)
    assert len(trials) == 6 and {t["state"] for t in trials.values()} == {"complete"}
    states = study_states(folder)
    assert states.count("COMPLETE") == 6 and set(states) <= {"COMPLETE", "FAIL"}
    resumed = [t for t in trials.values() if t["resumed"]]
    listing = run("runs", str(folder))
    assert listing.exit_code == 0 and "resumed" in listing.output.splitlines()[0]
    assert resumed or len(said) == 24  # kills between epochs leave nothing to continue


@pytest.mark.slow
def test_a_dead_machines_trial_is_continued_by_another(data_dir, tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    spec = write_spec(tmp_path, trials=2, set=LONGER)
    machine = {m: (spec, "--sweep-dir", str(tmp_path / m), "--storage", storage,
                   "--heartbeat", "1") for m in ("a", "b")}
    first = kill_when_training(sweep(*machine["a"], data_dir=data_dir,
                                     start_new_session=True), after=0)
    done = [e for t, e in epochs_said(first) if t == 0]
    # An epoch's line follows its checkpoint and its report to the study, so the kill may
    # fall between them: the run folder then holds one epoch more than was said.
    kept = len(json.loads((tmp_path / "a" / "trial-0000" / "history.json").read_text()))
    assert done and kept in (done[-1], done[-1] + 1) and kept < 4
    # Dead means silent past the grace period (twice the heartbeat): started sooner, b
    # would see trial 0 still alive and take a new trial first (also right, but another
    # story than this test's).
    time.sleep(2.5)
    second = finish(sweep(*machine["b"], data_dir=data_dir))
    assert f"trial 1: continuing {tmp_path / 'a' / 'trial-0000'} after epoch {kept}" in second, \
        (done, kept, second)  # all of it, should this fail: pytest cuts long strings
    # Machine a's trial 0 failed (its heartbeat stopped); its copy, trial 1, went on in
    # a's run folder from where the kill left it, and b trained a new trial 2.
    assert study_states(tmp_path, storage) == ["FAIL", "COMPLETE", "COMPLETE"]
    record = json.loads((tmp_path / "a" / "trial-0000" / "trial.json").read_text())
    assert record["trial"] == 1
    assert record["state"] == "complete" and record["resumed"] == 1
    assert [e for t, e in epochs_said(second) if t == 1] == list(range(kept + 1, 5))
    # Machine a back: nothing of its own is left to continue, nothing is trained again.
    again = finish(sweep(*machine["a"], data_dir=data_dir))
    assert not epochs_said(again) and "2 of 2 trials finished" in again


@pytest.mark.slow
def test_a_sweep_on_a_disk_that_fills_goes_on_once_there_is_room(data_dir, small_disk):
    from conftest import assert_whole, fill

    spec, folder = write_spec(small_disk.parent, trials=3, set=LONGER), small_disk / "sweep"
    proc = sweep(spec, "--sweep-dir", str(folder), data_dir=data_dir)
    out = when_training(proc, after=0)
    ballast = fill(small_disk)
    out += proc.communicate(timeout=300)[0]
    errors = [line for line in out.splitlines() if line.startswith("Error: ")]
    assert proc.returncode == 1 and len(errors) == 1 and "Traceback" not in out, out
    assert "full" in errors[0] or "No space left on device" in errors[0], errors[0]
    assert "run the same command again to continue" in errors[0]
    assert_whole(folder)
    ballast.unlink()
    out += finish(sweep(spec, "--sweep-dir", str(folder), data_dir=data_dir))
    said = epochs_said(out)
    assert sorted(said) == sorted(set(said)), "an epoch was trained twice"
    trials = trials_in(folder)
    assert len(trials) == 3 and {t["state"] for t in trials.values()} == {"complete"}
    for run_folder in folder.glob("trial-*"):
        rows = json.loads((run_folder / "history.json").read_text())
        assert [r["epoch"] for r in rows] == [0, 1, 2, 3], run_folder


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
