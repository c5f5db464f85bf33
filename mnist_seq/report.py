"""One self-contained HTML page about a run, images embedded, to share as a single file."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from mnist_seq.options import DEFAULT_OPTIONS, RuntimeOptions
from mnist_seq.plotting import plot_epoch_seconds
from mnist_seq.rundir import RunDir

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 9px;
text-align:right}th{background:#f3f3f3}img{max-width:100%}pre{background:#f6f6f6;padding:1em}"""


def build_report(run_dir: str | Path, options: RuntimeOptions = DEFAULT_OPTIONS) -> Path:
    """Write RUN_DIR/report.html; evaluates the run first if it has not been evaluated."""
    run = RunDir(run_dir).require_finished()
    metrics = run.read_metrics()
    evaluation = run.read_evaluation()
    if evaluation is None:
        from mnist_seq.evaluation import evaluate

        evaluation = evaluate(run.path, options)
    seconds_png = run.save_figure(plot_epoch_seconds(run.read_history()), RunDir.EPOCH_SECONDS)
    learned = _learned(run, options)
    config = run.read_config_text()

    parts = [
        f"<h1>{_e(run.name)}</h1>",
        _table("Test figures", {
            "test accuracy": f"{evaluation['accuracy']:.4f}",
            "test loss": f"{evaluation['loss']:.4f}",
            "top-2 accuracy": f"{evaluation['top2_accuracy']:.4f}",
            "best validation accuracy": f"{metrics.get('best_val_accuracy', 0):.4f} "
                                        f"(epoch {metrics.get('best_epoch')})",
            "test samples": evaluation["samples"],
        }),
        "<h2>Training curves</h2>", _img(run / RunDir.CURVES),
        _per_class(evaluation),
        "<h2>Confusion matrix</h2>", _img(run / RunDir.CONFUSION),
        "<h2>Most confidently wrong test digits</h2>", _img(run / RunDir.WORST_ERRORS),
        *learned,
        "<h2>Time per epoch</h2>", _img(seconds_png),
        _table("Speed, device and versions", {
            key: metrics[key] for key in (
                "train_seconds", "samples_per_second", "epochs", "params", "train_samples",
                "val_samples", "device", "seed", "backend", "python", "tensorflow", "jax",
                "keras", "numpy", "platform", "intra_op_threads", "inter_op_threads",
                "data_source", "started", "finished", "command") if key in metrics
        }),
        "<h2>Config</h2>", f"<pre>{_e(config)}</pre>",
    ]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(run.name)}"
            f"</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
    return run.write_text(RunDir.REPORT, page)


def _learned(run: RunDir, options: RuntimeOptions) -> list[str]:
    """What training did: the snapshots' pictures where the run kept them, which pixels
    decided a digit and the map of digits (from `inspect`, run here on test digit 0 if
    it has not been)."""
    saliency = sorted((run / RunDir.INSPECT).glob("saliency-*.png"))
    if not saliency or not run.inspect_file("digit_map").is_file():
        from mnist_seq.inspection import inspect_runs

        inspect_runs([run.path], options=options)
        saliency = sorted((run / RunDir.INSPECT).glob("saliency-*.png"))
    parts = []
    if run.read_snapshots() is not None:
        parts += ["<h2>The network as it learned</h2>", _img(run.inspect_file("learning"))]
        for name in ("learning_gif", "moved"):
            if run.inspect_file(name).is_file():
                parts.append(_img(run.inspect_file(name)))
    return parts + ["<h2>The pixels that decided</h2>", _img(saliency[0]),
                    "<h2>The map of digits</h2>", _img(run.inspect_file("digit_map"))]


def _e(value: Any) -> str:
    return html.escape(str(value))


def _img(path: Path) -> str:
    if not path.is_file():
        return f"<p><em>{_e(path.name)} is missing</em></p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    kind = "gif" if path.suffix == ".gif" else "png"
    return f"<img alt='{_e(path.name)}' src='data:image/{kind};base64,{data}'>"


def _table(title: str, items: dict[str, Any]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in items.items())
    return f"<h2>{_e(title)}</h2><table>{body}</table>"


def _per_class(evaluation: dict[str, Any]) -> str:
    head = "<tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"
    body = "".join(
        f"<tr><td>{r['class']}</td><td>{r['precision']:.4f}</td><td>{r['recall']:.4f}</td>"
        f"<td>{r['f1']:.4f}</td><td>{r['support']}</td></tr>" for r in evaluation["per_class"])
    return f"<h2>Per class</h2><table>{head}{body}</table>"
