"""From the train command's flags to a run: overrides, --resume's rules, the run folder's
name, when a child process trains; and the process helpers (ports, Ctrl-C, the child's
one line). Nothing here loads Keras."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from mnist_seq import launch, origin, processes
from mnist_seq.errors import ConfigError, DataError, RunDirError
from mnist_seq.options import DistributeOptions, RuntimeOptions
from mnist_seq.rundir import RunDir


def test_shortcuts_become_overrides_after_the_sets():
    request = launch.TrainRequest(sets=("train.epochs=3",), shortcuts={
        "epochs": "5", "seed": None, "deterministic": True, "max_test_samples": "9"})
    assert launch.overrides(request) == [("train.epochs", 3), ("train.epochs", 5),
                                         ("train.deterministic", True),
                                         ("data.max_test_samples", 9)]
    with pytest.raises(ValueError, match="unknown shortcuts"):
        launch.overrides(launch.TrainRequest(shortcuts={"epoch": "1"}))


def test_a_resumed_run_keeps_its_backend_and_data_unless_told(tmp_path):
    data, run = tmp_path / "mnist", RunDir(tmp_path / "run")
    data.mkdir()
    run.path.mkdir()
    origin.record(run, "jax", str(data), None)
    said = []
    kept = origin.resume_options(run, RuntimeOptions(), said.append)
    assert (kept.backend, kept.data_dir, said) == ("jax", str(data.resolve()), [])
    other = origin.resume_options(run, RuntimeOptions(backend="tensorflow",
                                                      data_dir="elsewhere"), said.append)
    assert (other.backend, other.data_dir) == ("tensorflow", "elsewhere")
    assert said == [f"Note: {run.path} started on jax; continuing on tensorflow, as "
                    "--backend says"]
    # Several processes must all restore what they saved: no other backend.
    origin.record(run, "jax", str(data), {"engine": "keras.distribution", "processes": 2})
    with pytest.raises(ConfigError, match="over several processes .* drop --backend tensorflow"):
        origin.resume_options(run, RuntimeOptions(backend="tensorflow"))
    data.rmdir()  # the folder moved: said, with the way out
    with pytest.raises(DataError, match=r"read MNIST from .*mnist, which is not there now: "
                                        r"point to the files with --data-dir DIR"):
        origin.resume_options(run, RuntimeOptions())
    assert origin.resume_options(run, RuntimeOptions(data_dir=str(tmp_path))).data_dir == str(
        tmp_path)


def test_a_new_run_is_named_after_its_config(tmp_path):
    config, run = launch.prepare(launch.TrainRequest(model="mlp", shortcuts={"epochs": "2"},
                                                     runs_root=str(tmp_path)))
    assert config["model"]["type"] == "mlp" and config["train"]["epochs"] == 2
    assert run.timestamped and run.name.startswith("mlp-") and run.path.parent == tmp_path
    assert not run.path.exists()  # made only once training is ready
    own = tmp_path / "mine.yaml"
    own.write_text("model: {type: cnn}\n")
    config, run = launch.prepare(launch.TrainRequest(config_file=str(own),
                                                     run_dir=str(tmp_path / "r")))
    assert config["model"]["type"] == "cnn" and run.path == tmp_path / "r"
    assert not run.timestamped


def test_resume_takes_nothing_of_its_own(tmp_path):
    _, run = launch.prepare(launch.TrainRequest(model="mlp", run_dir=str(tmp_path / "r")))
    run.create()
    run.write_config(launch.prepare(launch.TrainRequest(model="mlp"))[0])
    config, resumed = launch.prepare(launch.TrainRequest(resume=str(run.path)))
    assert config["model"]["type"] == "mlp" and resumed.path == run.path
    for extra in ({"model": "mlp"}, {"sets": ("train.epochs=2",)}, {"run_dir": "x"},
                  {"shortcuts": {"seed": "1"}}):
        with pytest.raises(ConfigError, match="--resume continues a run"):
            launch.prepare(launch.TrainRequest(resume=str(run.path), **extra))
    with pytest.raises(RunDirError, match="no run to resume"):
        launch.prepare(launch.TrainRequest(resume=str(tmp_path / "none")))


def test_any_cluster_flag_implies_distribute_and_jax_trains_in_a_child(monkeypatch):
    assert launch.distribute_options(False) is None
    assert launch.distribute_options(True) == DistributeOptions()
    assert launch.distribute_options(False, cpu_devices=2) == DistributeOptions(cpu_devices=2)
    spread = DistributeOptions(2, 0, "localhost:1234")
    assert spread.several_processes and not DistributeOptions().several_processes
    monkeypatch.delenv(processes.CHILD, raising=False)
    assert launch.needs_child(RuntimeOptions(backend="jax", distribute=spread))
    assert not launch.needs_child(RuntimeOptions(backend="jax"))
    assert not launch.needs_child(RuntimeOptions(backend="tensorflow", distribute=spread))
    monkeypatch.setenv(processes.CHILD, "1")  # the child itself trains
    assert not launch.needs_child(RuntimeOptions(backend="jax", distribute=spread))


def test_a_port_in_use_is_found():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert processes.port_taken("127.0.0.1", port) is not None
    assert processes.port_taken("127.0.0.1", port) is None


def test_the_first_ctrl_c_calls_the_action_and_the_handler_before_it():
    heard = []
    previous = signal.signal(signal.SIGINT, lambda *_: heard.append("outer"))
    try:
        with processes.first_ctrl_c(lambda: heard.append("action")):
            os.kill(os.getpid(), signal.SIGINT)
            assert heard == ["action", "outer"]
            os.kill(os.getpid(), signal.SIGINT)  # the second: the handler before, alone
            assert heard == ["action", "outer", "outer"]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_child_dies_with_its_parent(tmp_path):
    pid_file = tmp_path / "child.pid"
    parent = (
        "import subprocess, sys, time\n"
        "from mnist_seq.processes import die_with_parent\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " preexec_fn=die_with_parent)\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", parent])
    for _ in range(200):
        if pid_file.is_file() and pid_file.read_text():
            break
        subprocess.run(["sleep", "0.05"])
    child = int(pid_file.read_text())
    proc.kill()
    proc.wait()
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        subprocess.run(["sleep", "0.05"])
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the child outlived its parent")


def test_the_childs_error_line_becomes_the_error(monkeypatch):
    monkeypatch.setattr(processes.sys, "executable", sys.executable)
    with pytest.raises(processes.ChildFailed) as failed:
        processes.run_child(["train", "--config", "/no/such.yaml"], "R")
    assert str(failed.value) == "config file not found: /no/such.yaml"
    assert failed.value.exit_code == 2
