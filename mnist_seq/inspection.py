"""`mnist-seq inspect`: one digit, from the test set or the user's image, as a run's
model reads it, and what training did; the pictures themselves are drawn by `explain.py`,
chosen by the model type (`kinds.KINDS`), and by `learning.py`."""

from __future__ import annotations

from pathlib import Path

from mnist_seq import backend, digit_map, explain, learning, origin
from mnist_seq.data import load_mnist
from mnist_seq.errors import MnistSeqError
from mnist_seq.evaluation import load_model
from mnist_seq.kinds import KINDS
from mnist_seq.options import DEFAULT_OPTIONS, RuntimeOptions
from mnist_seq.rundir import RunDir


def inspect_runs(run_dirs: list[str | Path], index: int | None = None,
                 image: str | Path | None = None,
                 options: RuntimeOptions = DEFAULT_OPTIONS,
                 map_digits: int = digit_map.DIGITS, log=print) -> list[Path]:
    """Write the pictures for the first run (and the rows-read curve for every LSTM run
    given) into RUN_DIR/inspect/; return the files written. `map_digits`: how many test
    digits the map of digits shows (0: no map); `log` says what takes a while."""
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
    return written + KINDS[config["model"]["type"]].pictures(shown) + learned(
        shown, map_digits, log)


def learned(shown: explain.Shown, map_digits: int = digit_map.DIGITS,
            log=print) -> list[Path]:
    """What training did, for every model type: the snapshots' pictures (where the run
    kept them), which pixels decided the digit, and the map of `map_digits` test digits
    (none for 0)."""
    from mnist_seq import saliency

    run = shown.run
    kept = run.read_snapshots()
    written = learning.snapshot_pictures(run, kept) if kept else []
    why = saliency.explain_digit(shown.model, saliency.gradient_fn(shown.model), shown.digit)
    written.append(run.save_figure(learning.saliency_picture(shown.digit, why, shown.title),
                                   run.inspect_file("saliency", shown.tag)))
    if map_digits:
        images = shown.test.x_test[:map_digits]
        log(f"Mapping {len(images):,} test digits ({', '.join(digit_map.projections())}), "
            "from the initial and the trained weights")
        maps = digit_map.digit_maps(shown.model, explain.initial_model(run, shown.config),
                                    images, shown.test.y_test[:map_digits],
                                    seed=shown.config["train"]["seed"])
        written.append(run.save_figure(learning.digit_map_picture(maps, images, run.name),
                                       run.inspect_file("digit_map")))
    return written
