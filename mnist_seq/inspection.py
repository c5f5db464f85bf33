"""`mnist-seq inspect`: one digit, from the test set or the user's image, as a run's
model reads it; the pictures themselves are drawn by `explain.py`, chosen by the model
type (`kinds.KINDS`)."""

from __future__ import annotations

from pathlib import Path

from mnist_seq import backend, explain, origin
from mnist_seq.data import load_mnist
from mnist_seq.errors import MnistSeqError
from mnist_seq.evaluation import load_model
from mnist_seq.kinds import KINDS
from mnist_seq.options import DEFAULT_OPTIONS, RuntimeOptions
from mnist_seq.rundir import RunDir


def inspect_runs(run_dirs: list[str | Path], index: int | None = None,
                 image: str | Path | None = None,
                 options: RuntimeOptions = DEFAULT_OPTIONS) -> list[Path]:
    """Write the pictures for the first run (and the rows-read curve for every LSTM run
    given) into RUN_DIR/inspect/; return the files written."""
    runs = [RunDir(r).require_finished() for r in run_dirs]
    configs = [r.read_config() for r in runs]  # every one checked before the data loads
    run, config = runs[0], configs[0]
    backend.choose(options.backend)
    data = load_mnist(origin.data_dir(run, options.data_dir), config["data"]["dir"])
    if image is not None:
        from mnist_seq.predict import load_inputs

        name, digit = load_inputs(image)[0]
        label, tag = None, Path(name).stem
    else:
        index = 0 if index is None else index
        if not 0 <= index < len(data.x_test):
            raise MnistSeqError(f"--index {index} is out of range: the test set has "
                                f"{len(data.x_test)} digits (0..{len(data.x_test) - 1})")
        digit, label, tag = data.x_test[index], int(data.y_test[index]), f"test{index}"
    backend.setup(options)
    model = load_model(run / RunDir.MODEL)
    written = [run.write_text(run.inspect_file("layers"), explain.layer_table(model) + "\n")]
    title = f"{run.name}, " + (f"test digit #{index} (label {label})" if label is not None
                               else f"image {tag}")
    others = [(r.name, load_model(r / RunDir.MODEL), c)
              for r, c in zip(runs[1:], configs[1:], strict=True)]
    shown = explain.Shown(run, config, model, digit, tag, title, data, others)
    return written + KINDS[config["model"]["type"]].pictures(shown)
