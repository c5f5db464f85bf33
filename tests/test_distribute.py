"""`train --distribute`: two JAX processes on localhost train the same model as one
process fed the same global batches, into one run folder; a killed process stops the
other within a minute with one line, and `--resume` on both finishes the run;
TensorFlow's MirroredStrategy over two logical CPU devices; the mistakes a user can
make are one line each."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from page import free_port
from test_cli import assert_one_line_error, run
from test_learning import expected_steps, steps_of
from test_robustness import assert_complete_run, wait_for_epochs

from mnist_seq.errors import ConfigError
from mnist_seq.rundir import RunDir

# 576 training samples: nine full global batches of 64, so no sample is left over
# however the batch is split.
SMALL = ["--model", "mlp", "--max-train-samples", "640", "--batch-size", "64", "--epochs", "2",
         "--max-test-samples", "200", "--device", "cpu"]
# About a second an epoch: long enough to kill a process in the middle of the run.
LONGER = ["--model", "mlp", "--max-train-samples", "20000", "--epochs", "5",
          "--max-test-samples", "500", "--device", "cpu"]


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "mnist_seq", "train", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def start_pair(port: int, *args: str) -> list[subprocess.Popen]:
    """Process 1 first, then process 0, as two people on two machines might."""
    return [start(*args, "--num-processes", "2", "--process-id", str(i), "--coordinator",
                  f"localhost:{port}") for i in (1, 0)][::-1]


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def weights(model_file: Path) -> list[np.ndarray]:
    import keras

    return keras.saving.load_model(model_file).get_weights()


def assert_same_weights(a: Path, b: Path, atol: float = 1e-5) -> None:
    for x, y in zip(weights(a), weights(b), strict=True):
        np.testing.assert_allclose(x, y, atol=atol)


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains(data_dir, tmp_path):
    pytest.importorskip("jax")
    tmp_path = tmp_path / "runs"
    common = [*SMALL, "--backend", "jax", "--data-dir", str(data_dir)]
    code, out, err = finish(start(*common, "--distribute", "--run-dir", str(tmp_path / "one")))
    assert code == 0, out + err

    procs = start_pair(free_port(), *common, "--run-dir", str(tmp_path / "two"))
    (code0, out0, err0), (code1, out1, err1) = [finish(p) for p in procs]
    assert code0 == 0 and code1 == 0, out0 + err0 + out1 + err1
    assert "data parallel over 2 devices in 2 processes" in out0
    assert f"Wrote {tmp_path / 'two'}" in out0 and "Wrote" not in out1
    assert "Process 1 of 2: Training" in out1
    # One run folder, written by process 0 alone.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    assert_same_weights(tmp_path / "one" / "model.keras", tmp_path / "two" / "model.keras")
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["distributed"] == {"engine": "keras.distribution.DataParallel",
                                  "processes": 2, "devices": 2}
    # Validation and test figures cover the whole sets.
    assert two["test_samples"] == 200 and two["val_samples"] == one["val_samples"]
    assert two["test_accuracy"] == pytest.approx(one["test_accuracy"], abs=1e-6)
    assert two["final_val_accuracy"] == pytest.approx(one["final_val_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_a_slurm_job_needs_no_cluster_flags(data_dir, tmp_path):
    """With none of --num-processes/--process-id/--coordinator, jax.distributed finds the
    processes itself: here from the variables SLURM sets for a job of two tasks."""
    pytest.importorskip("jax")
    # JAX derives the coordinator's port from the job id, in 61440-65535.
    job = next(j for j in range(4096) if _port_is_free(61440 + j))
    procs = []
    for task in (1, 0):
        slurm = {"SLURM_JOB_ID": str(job), "SLURM_STEP_NODELIST": "localhost",
                 "SLURM_NTASKS": "2", "SLURM_PROCID": str(task), "SLURM_LOCALID": str(task)}
        procs.append(start(*SMALL, "--backend", "jax", "--data-dir", str(data_dir),
                           "--distribute", "--run-dir", str(tmp_path / "job"), env=slurm))
    (code1, out1, err1), (code0, out0, err0) = [finish(p) for p in procs]
    assert code0 == 0 and code1 == 0, out0 + err0 + out1 + err1
    assert "data parallel over 2 devices in 2 processes" in out0
    assert "Process 1 of 2: Test accuracy" in out1
    assert (tmp_path / "job" / "metrics.json").is_file()


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.slow
def test_a_killed_process_stops_the_other_and_both_resume(data_dir, tmp_path):
    pytest.importorskip("jax")
    run_dir = tmp_path / "run"
    common = [*LONGER, "--backend", "jax", "--data-dir", str(data_dir), "--snapshots"]
    p0, p1 = start_pair(free_port(), *common, "--run-dir", str(run_dir))
    wait_for_epochs(run_dir, 1, p0, timeout=240)
    p1.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    code, out, err = finish(p0, timeout=90)
    assert time.monotonic() - killed < 60
    assert code != 0
    assert err.strip().splitlines() == [
        f"Error: process 1 of 2 stopped (its connection closed), so process 0 stops too. "
        f"To resume, start every process again with --resume {run_dir} (and its "
        "--num-processes, --process-id and --coordinator, if given)"], out + err
    p1.communicate()
    assert not (run_dir / "metrics.json").exists()

    # Word for word what process 0 said: --resume and the three cluster flags, no more.
    procs = start_pair(free_port(), "--resume", str(run_dir))
    results = [finish(p) for p in procs]
    assert all(code == 0 for code, _, _ in results), results
    assert f"Resuming {run_dir} after epoch" in results[0][1]
    assert_complete_run(run_dir, 5)
    # The snapshots went on where the kill left them, as if nothing had happened.
    assert RunDir(run_dir).read_snapshots().steps == expected_steps(
        steps_of(RunDir(run_dir)), 5, batches=True)


@pytest.mark.slow
def test_ctrl_c_stops_a_process_cleanly_and_the_other_with_one_line(data_dir, tmp_path):
    pytest.importorskip("jax")
    run_dir = tmp_path / "run"
    p0, p1 = start_pair(free_port(), *LONGER, "--backend", "jax", "--data-dir", str(data_dir),
                        "--run-dir", str(run_dir))
    wait_for_epochs(run_dir, 1, p0, timeout=240)
    p0.send_signal(signal.SIGINT)
    code0, _, err0 = finish(p0, timeout=90)
    code1, _, err1 = finish(p1, timeout=90)
    assert code0 == 130 and len(err0.strip().splitlines()) == 1, err0
    assert err0.startswith("Error: interrupted in epoch") and f"--resume {run_dir}" in err0
    assert code1 != 0 and err1.strip().splitlines() == [
        f"Error: process 0 of 2 stopped (its connection closed), so process 1 stops too. "
        f"To resume, start every process again with --resume {run_dir} (and its "
        "--num-processes, --process-id and --coordinator, if given)"]


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(data_dir, tmp_path):
    common = [*SMALL, "--backend", "tensorflow", "--data-dir", str(data_dir), "--distribute",
              "--snapshots"]
    results = {}
    for n in (1, 2):
        code, out, err = finish(start(*common, "--cpu-devices", str(n), "--run-dir",
                                      str(tmp_path / f"cpus{n}")))
        assert code == 0, out + err
        results[n] = out
    assert "data parallel over 2 devices (tf.distribute.MirroredStrategy)" in results[2]
    metrics = json.loads((tmp_path / "cpus2" / "metrics.json").read_text())
    assert metrics["distributed"]["devices"] == 2
    # Each replica computes half the batch; the averaged gradient is the whole batch's.
    assert_same_weights(tmp_path / "cpus1" / "model.keras", tmp_path / "cpus2" / "model.keras")
    one, two = (RunDir(tmp_path / f"cpus{n}").read_snapshots() for n in (1, 2))
    assert one.steps == two.steps == expected_steps(steps_of(RunDir(tmp_path / "cpus2")), 2,
                                                    batches=True)
    for a, b in zip(one.values, two.values, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("args, fragment, code", [
    (["--num-processes", "2"], "--num-processes, --process-id and --coordinator go together",
     2),
    (["--num-processes", "2", "--process-id", "2", "--coordinator", "localhost:1234"],
     "--process-id: got 2, expected 0 to 1", 2),
    (["--num-processes", "2", "--process-id", "0", "--coordinator", "localhost"],
     "expected HOST:PORT", 2),
    (["--num-processes", "2", "--process-id", "0", "--coordinator", "localhost:1234",
      "--backend", "tensorflow"], "several processes need --backend jax", 2),
])
def test_distribution_mistakes_are_one_line(args, fragment, code, data_dir, tmp_path):
    result = run("train", "--model", "mlp", "--data-dir", str(data_dir), "--run-dir",
                 str(tmp_path / "never"), *args)
    assert_one_line_error(result, fragment, code=code)
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_a_taken_coordinator_port_and_a_missing_run_dir_are_one_line(data_dir, tmp_path):
    pytest.importorskip("jax")
    common = [*SMALL, "--backend", "jax", "--data-dir", str(data_dir)]
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = finish(start(*common, "--run-dir", str(tmp_path / "never"),
                                      "--num-processes", "2", "--process-id", "0",
                                      "--coordinator", f"localhost:{port}"))
    assert code == 1 and err.strip() == (
        f"Error: --coordinator localhost:{port}: port {port} is in use on this machine "
        "(Address already in use); choose another port")

    # Said before joining: a process alone, whose partner never comes, says it at once
    # rather than waiting minutes for the group.
    alone = start(*common, "--runs-root", str(tmp_path / "runs"), "--num-processes", "2",
                  "--process-id", "1", "--coordinator", f"localhost:{free_port()}")
    code, out, err = finish(alone, timeout=120)
    assert code == 2 and err.strip() == (
        "Error: a run over several processes needs --run-dir: every process must name "
        "the same run folder"), out + err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "never").exists()


def test_the_parts_of_every_batch_make_up_the_whole_set():
    from mnist_seq.shards import ShardedBatches

    x = np.arange(100, dtype=np.float32).reshape(100, 1)
    y = np.arange(100)
    # Training: 3 processes, one device each; 100 = 3 batches of 30 and a tail of 10, of
    # which the 9 that split three ways are kept.
    shards = [ShardedBatches(x, y, 30, i, 3, 3, seed=7) for i in range(3)]
    orders = []
    for _epoch in range(2):
        seen = []
        for s in shards:
            s.on_epoch_begin()
        assert len(shards[0]) == 4
        for b in range(4):
            parts = [s[b] for s in shards]
            assert len({len(p[1]) for p in parts}) == 1  # equal parts
            assert all(np.array_equal(p[0][:, 0], p[1]) for p in parts)
            seen += [int(v) for p in parts for v in p[1]]
        assert len(seen) == 99 == len(set(seen))
        orders.append(seen)
    assert orders[0] != orders[1]  # a new order each epoch, the same in every process

    # Evaluation: every sample once, with weight 1; the copies that fill the last batch
    # weigh 0.
    shards = [ShardedBatches(x, y, 32, i, 2, 4) for i in range(2)]
    weighted = {}
    for b in range(len(shards[0])):
        for s in shards:
            _, labels, weights = s[b]
            for label, w in zip(labels, weights, strict=True):
                weighted[int(label)] = weighted.get(int(label), 0) + float(w)
    assert weighted == {i: 1.0 for i in range(100)}


def test_a_resumed_epoch_gets_the_order_it_would_have_had():
    from mnist_seq.shards import ShardedBatches

    x, y = np.zeros((50, 1), np.float32), np.arange(50)
    straight = ShardedBatches(x, y, 10, 0, 1, 1, seed=3)
    for _ in range(3):
        straight.on_epoch_begin()
    resumed = ShardedBatches(x, y, 10, 0, 1, 1, seed=3, first_epoch=2)
    resumed.on_epoch_begin()
    assert np.array_equal(straight.order, resumed.order)


@pytest.mark.parametrize("log, code, expected", [
    ("E1125 coordination_service.cc:1549] UNAVAILABLE: Task 1 heartbeat timeout. This "
     "indicates that the remote task has failed\nF1125 client.h:80] Terminating process",
     -6, "process 1 stopped answering, so the run stopped; start every process again with "
         "--resume runs/x"),
    ("UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):\n3\n",
     -6, "process 3 stopped answering"),
    ("F1125 client.h:80] Terminating process because the JAX distributed service detected "
     "fatal errors.\n:UNKNOWN:Error received from peer {grpc_message:\"Socket closed\"}",
     1, "lost the coordinator (process 0), so the run stopped"),
    ("E1125 add_port.cc:83] Failed to add port to server\n", -11,
     "the training process ended with signal 11 (no message); --debug shows its log"),
])
def test_what_the_runtime_logged_becomes_one_line(log, code, expected):
    from mnist_seq.processes import why_it_stopped

    said = why_it_stopped(log, code, "runs/x")
    assert expected in said and "\n" not in said


def test_a_local_cluster_does_nothing_but_pass_the_data_through():
    from mnist_seq.distribute import Cluster, join

    local = join("tensorflow", None)
    assert local == Cluster.local("tensorflow") and local.writer
    assert not (local.distributed or local.several_processes or local.feeds_parts)
    assert local.describe() == "" and local.facts() is None
    with local.scope(), local.alone():
        pass
    with pytest.raises(RuntimeError, match="gloo"), local.lost_processes("hint"):
        raise RuntimeError("gloo connection closed")  # not a lost process: one is alone
    x, y = np.zeros((5, 28, 28), np.float32), np.arange(5)
    assert local.eval_inputs(x, y, 4) == {"x": x, "y": y, "batch_size": 4}
    assert local.validation(x, y, 4)["validation_batch_size"] == 4
    local.check_batch(7, "train.batch_size")  # any batch splits over one device
    local.check_run_dir(named_run=False)  # one process may write a timestamped folder
    local.close()


def test_several_processes_need_one_named_run_folder():
    from mnist_seq.distribute import Cluster, check
    from mnist_seq.options import DistributeOptions

    named = DistributeOptions(num_processes=2, process_id=0, coordinator="localhost:1234")
    assert check(named, "jax", named_run=True)[0].startswith("Joining 2 processes")
    with pytest.raises(ConfigError, match="needs --run-dir"):
        check(named, "jax", named_run=False)  # before joining, so no process waits
    assert check(DistributeOptions(), "jax", named_run=False) == []  # one process
    found = Cluster("jax", 1, 2, 2, None)  # a cluster JAX found by itself
    with pytest.raises(ConfigError, match="needs --run-dir"):
        found.check_run_dir(named_run=False)
    found.check_run_dir(named_run=True)
