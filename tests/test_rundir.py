"""The run folder object: names, atomic writes, one definition of finished and resumable,
the resume point, and a reader-only mode that writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnist_seq.errors import MnistSeqError, RunDirError
from mnist_seq.files import atomic_write
from mnist_seq.rundir import RunDir, best_epoch

ROWS = [{"epoch": 0, "loss": 0.5, "val_accuracy": 0.90, "seconds": 1.0},
        {"epoch": 1, "loss": 0.3, "val_accuracy": 0.95, "seconds": 1.0},
        {"epoch": 2, "loss": 0.2, "val_accuracy": 0.94, "seconds": 1.0}]


def test_new_never_reuses_a_folder(tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    with pytest.raises(RunDirError, match="run folder already exists"):
        RunDir.new("mlp", taken)
    first = RunDir.new("mlp", root=tmp_path).create()
    second = RunDir.new("mlp", root=tmp_path).create()  # most likely the same second
    assert first.path != second.path and first.path.is_dir() and second.path.is_dir()
    assert second.name.startswith("mlp-") and not list(first.path.iterdir())
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(RunDirError, match="cannot create run folder"):
        RunDir.new("mlp", root=tmp_path / "a-file").create()


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "history.json"
    path.write_text("old")

    def half_then_fail(tmp: Path):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(MnistSeqError, match="cannot write .*No space left on device"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == [path.name]
    atomic_write(tmp_path / "w.weights.h5", lambda tmp: tmp.write_text(tmp.name))
    # The temporary name keeps the suffix that Keras and matplotlib go by.
    assert (tmp_path / "w.weights.h5").read_text() == ".w.tmp.weights.h5"


def test_state_finished_and_resumable(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(RunDirError, match="no such run folder"):
        run.require_finished()
    with pytest.raises(RunDirError, match="no run to resume"):
        run.require_resumable()
    run.create().write_text(RunDir.CONFIG, "model: {type: mlp}\n")
    assert run.resumable and not run.finished
    with pytest.raises(RunDirError, match="is not a finished mnist-seq run: no metrics.json"):
        run.require_finished()
    run.write_json(RunDir.METRICS, {"test_accuracy": 0.9})
    assert run.finished and not run.resumable
    assert run.require_finished().read_metrics() == {"test_accuracy": 0.9}
    with pytest.raises(RunDirError, match="has finished already"):
        run.require_resumable()
    located, model = RunDir.locate_model(run.path)
    assert located.path == run.path and model == run.path / "model.keras"
    located, model = RunDir.locate_model(run.path / "config.yaml")  # any file: its folder
    assert located.path == run.path and model == run.path / "config.yaml"
    with pytest.raises(MnistSeqError, match="no such run folder or model file"):
        RunDir.locate_model(tmp_path / "nothing")


def test_history_round_trip_and_best_epoch(tmp_path):
    run = RunDir(tmp_path / "run").create()
    run.write_history(ROWS)
    assert run.read_history() == ROWS
    assert (run / "history.csv").read_text().splitlines()[0] == \
        "epoch,loss,accuracy,val_loss,val_accuracy,learning_rate,seconds"
    (run / "history.json").unlink()
    assert [r["val_accuracy"] for r in run.read_history()] == [0.90, 0.95, 0.94]
    assert best_epoch(ROWS) == 1
    assert best_epoch([{"val_loss": 2.0}, {"val_loss": 1.0}]) == 1
    assert best_epoch([{"loss": 1.0}]) is None


def test_resume_point_follows_the_history_and_the_last_checkpoint(tmp_path):
    run = RunDir(tmp_path / "run").create()
    assert run.resume_point() == ([], None)  # killed before the first epoch ended
    run.write_history(ROWS[:1])
    assert run.resume_point() == ([], None)  # epoch 1 recorded, not yet saved: again
    (run / "backup").mkdir()
    for n in (1, 2):
        run.checkpoint(n).write_bytes(b"weights")
    run.write_history(ROWS)
    # Epoch 3 was recorded after the last checkpoint (of epoch 2): it is trained again.
    assert run.resume_point() == (ROWS[:2], run.checkpoint(2))
    run.write_history(ROWS[:2])
    assert run.resume_point() == (ROWS[:2], run.checkpoint(2))
    run.write_history(ROWS[:1])  # a history behind its backup: something was lost
    with pytest.raises(RunDirError, match="history has 1 epochs but the last backup .* 2"):
        run.resume_point()


def test_save_checkpoint_keeps_only_the_last(tmp_path):
    class Model:
        def save_weights(self, path):
            Path(path).write_text("w")

    run = RunDir(tmp_path / "run").create()
    for n in (1, 2, 3):
        run.save_checkpoint(Model(), n)
    assert sorted(p.name for p in (run / "backup").iterdir()) == ["epoch-3.weights.h5"]
    run.remove_backup()
    assert not (run / "backup").exists()


def test_a_reader_writes_nothing(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = tmp_path / "run"
    reader = RunDir.new("x", path, writer=False).create()
    reader.write_text(RunDir.CONFIG, "x")
    reader.write_json(RunDir.METRICS, {})
    reader.write_history(ROWS)
    reader.save_figure(plt.figure(), RunDir.CURVES)
    reader.save_checkpoint(object(), 1)
    reader.inspect_file("layers")
    assert not path.exists()
    path.mkdir()
    (path / "backup").mkdir()
    RunDir(path, writer=False).remove_backup()
    assert (path / "backup").is_dir()


def test_runs_and_report_read_through_the_object(tmp_path):
    run = RunDir(tmp_path / "r").create()
    run.write_text(RunDir.CONFIG, "model: {type: cnn}\n")
    run.write_history(ROWS)
    from mnist_seq.runs import list_runs

    (row,) = list_runs(tmp_path)
    assert (row["model"], row["epochs"], row["best_val_accuracy"]) == ("cnn", 3, 0.95)
    assert row["test_accuracy"] is None  # not finished
    run.write_json(RunDir.METRICS, {"test_accuracy": 0.93, "params": 10})
    (row,) = list_runs(tmp_path)
    assert (row["test_accuracy"], row["params"]) == (0.93, 10)


def test_a_sweep_folder_owns_its_files_and_its_trials_records(tmp_path):
    from mnist_seq.sweep_folder import SweepFolder

    folder = SweepFolder(tmp_path / "sweep")
    folder.claim({"spec": 1}, "sqlite:///x")
    folder.write_state("s", "sqlite:///x", {"spec": 1})
    folder.claim({"spec": 1}, "sqlite:///x")  # the same sweep again: continued
    with pytest.raises(RunDirError, match="another spec"):
        folder.claim({"spec": 2}, "sqlite:///x")
    with pytest.raises(RunDirError, match="same --storage"):
        folder.claim({"spec": 1}, "postgresql://u:***@h/db")
    with (folder.exclusive(), pytest.raises(RunDirError, match="another sweep is running"),
          SweepFolder(folder.path).exclusive()):
        pass
    folder.trial(3).path.mkdir()
    folder.mark(3, {"lr": 0.1}, "pruned", "stopped after epoch 1")
    assert folder.trial(3).read_trial() == {"trial": 3, "state": "pruned", "value": None,
                                            "params": {"lr": 0.1},
                                            "note": "stopped after epoch 1", "resumed": 0}
    folder.mark(3, {"lr": 0.1}, "running", resumed=2)
    folder.mark(3, {"lr": 0.1}, "complete", value=0.5)  # the count is carried
    assert folder.trial(3).read_trial()["resumed"] == 2
    assert folder.trial(3).name == "trial-0003" and folder.read_best() is None
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(RunDirError, match="is not a sweep folder"):
        SweepFolder(other).claim({"spec": 1}, "sqlite:///x")
    assert (other / "keep.txt").read_text() == "mine"
