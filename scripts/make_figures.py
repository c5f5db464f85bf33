"""Regenerate the README's pictures (scripts/figures/) from full runs made by
scripts/train_all.sh, plus a one-epoch CNN run that keeps its initial weights and a
`cnn` and an `lstm-fast` run that keep snapshots as they learn.

    python scripts/make_figures.py [RUNS_ROOT]   (needs MNIST_SEQ_DATA or the Keras cache)
"""

import shutil
import subprocess
import sys
from pathlib import Path

from mnist_seq.rundir import RunDir

root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/final")
out = Path(__file__).parent / "figures"
out.mkdir(exist_ok=True)
cnn = Path("runs/figures-cnn-1epoch")
learning = {"cnn": Path("runs/figures-cnn-snapshots"),
            "lstm-fast": Path("runs/figures-lstm-fast-snapshots")}


def mnist_seq(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "mnist_seq", *args], check=True)


if not cnn.is_dir():
    mnist_seq("train", "--model", "cnn", "--epochs", "1", "--run-dir", str(cnn))
for config, folder in learning.items():
    if not folder.is_dir():
        mnist_seq("train", "--model", config, "--snapshots", "--run-dir", str(folder))
    mnist_seq("inspect", str(folder), "--index", "3")
mnist_seq("inspect", str(root / "lstm"), str(root / "lstm-single"), "--index", "3")
mnist_seq("inspect", str(cnn), "--index", "3")
mnist_seq("inspect", str(root / "mlp"), "--index", "3")
mnist_seq("evaluate", str(root / "cnn"))
lstm, cnn_run, mlp = RunDir(root / "lstm"), RunDir(cnn), RunDir(root / "mlp")
cnn_learning, lstm_learning = RunDir(learning["cnn"]), RunDir(learning["lstm-fast"])
copies = {
    cnn_learning.inspect_file("learning"): "cnn-learning.png",
    cnn_learning.inspect_file("learning_gif"): "cnn-learning.gif",
    cnn_learning.inspect_file("moved"): "cnn-weights-moved.png",
    cnn_learning.inspect_file("saliency", "test3"): "cnn-saliency-test3.png",
    cnn_learning.inspect_file("digit_map"): "cnn-digit-map.png",
    lstm_learning.inspect_file("learning"): "lstm-learning.png",
    lstm_learning.inspect_file("saliency", "test3"): "lstm-saliency-test3.png",
    lstm_learning.inspect_file("digit_map"): "lstm-digit-map.png",
    mlp.inspect_file("saliency", "test3"): "mlp-saliency-test3.png",
    mlp.inspect_file("digit_map"): "mlp-digit-map.png",
    lstm / RunDir.CURVES: "lstm-curves.png",
    lstm.inspect_file("lstm_reading", "test3"): None,
    lstm.inspect_file("lstm_gif", "test3"): None,
    lstm.inspect_file("rows_read"): None,
    cnn_run.inspect_file("cnn_filters"): None,
    cnn_run.inspect_file("cnn_maps", "test3"): None,
    mlp.inspect_file("mlp_units", "test3"): None,
    RunDir(root / "cnn") / RunDir.CONFUSION: "cnn-confusion.png",
    RunDir(root / "cnn") / RunDir.WORST_ERRORS: "cnn-worst-errors.png",
}
for source, name in copies.items():
    shutil.copy(source, out / (name or source.name))
    print(f"Wrote {out / (name or source.name)}")
