"""The `mnist-seq` command line. It parses arguments and calls the library;
it is the only place where errors become messages and exit codes."""

from __future__ import annotations

import os
import shlex
import sys

import click

from mnist_seq import __version__
from mnist_seq.errors import MnistSeqError
from mnist_seq.options import BACKENDS, DEVICES


class _Group(click.Group):
    """Turns library errors into one line on stderr and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except MnistSeqError as e:
            if _debug(ctx):
                raise
            _fail(ctx, str(e), e.exit_code)
        except KeyboardInterrupt:
            _fail(ctx, "interrupted", 130)
        except Exception as e:  # a bug or an environment problem we did not foresee
            if _debug(ctx):
                raise
            _fail(ctx, f"unexpected {e.__class__.__name__}: {e} (run with --debug for the "
                       "traceback)", 1)


def _debug(ctx: click.Context) -> bool:
    return bool(ctx.params.get("debug")) or os.environ.get("MNIST_SEQ_DEBUG") == "1"


def _fail(ctx: click.Context, message: str, code: int) -> None:
    click.echo(f"Error: {' '.join(message.split())}", err=True)
    ctx.exit(code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mnist-seq")
@click.option("--debug", is_flag=True, help="Show the backend's logs and full tracebacks.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Train, evaluate and understand MNIST classifiers with Keras."""
    ctx.obj = {"debug": debug}


def backend_option(command):
    """--backend, for every command that loads Keras; kept in the context for `_options`."""
    def remember(ctx: click.Context, _param, value):
        ctx.obj["backend"] = value

    return click.option(
        "--backend", type=click.Choice(BACKENDS), expose_value=False, callback=remember,
        help="Keras backend (default: $KERAS_BACKEND, else tensorflow).")(command)


@cli.command()
@backend_option
@click.option("--model", "model_name", metavar="NAME",
              help="A bundled config: lstm (default), lstm-single, cnn, mlp.")
@click.option("--config", "config_file", metavar="FILE", help="Your own YAML config instead.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override any config key, e.g. --set model.units=[64,64]. Repeatable.")
@click.option("--epochs", metavar="N", help="Shortcut for --set train.epochs=N.")
@click.option("--batch-size", metavar="N", help="Shortcut for --set train.batch_size=N.")
@click.option("--learning-rate", metavar="X", help="Shortcut for --set train.learning_rate=X.")
@click.option("--seed", metavar="N", help="Shortcut for --set train.seed=N.")
@click.option("--max-train-samples", metavar="N",
              help="Train on a random slice of N samples (smoke runs).")
@click.option("--max-test-samples", metavar="N", help="Score only the first N test samples.")
@click.option("--data-dir", metavar="DIR",
              help="Folder with the MNIST IDX files or mnist.npz (else $MNIST_SEQ_DATA, "
                   "data.dir, the Keras cache).")
@click.option("--run-dir", metavar="DIR", help="Run folder to create (must not exist).")
@click.option("--runs-root", default="runs", show_default=True, metavar="DIR",
              help="Where new run folders go.")
@click.option("--device", type=click.Choice(DEVICES), default="auto",
              show_default=True, help="Where to train.")
@click.option("--tensorboard", is_flag=True, help="Also write TensorBoard logs.")
@click.option("--deterministic", is_flag=True,
              help="Two runs with the same seed match exactly (TensorFlow's op determinism; "
                   "XLA's deterministic GPU ops on JAX).")
@click.option("--snapshots", is_flag=True,
              help="Keep the network as it learns (train.snapshots): inspect draws it.")
@click.option("--resume", metavar="RUN_DIR",
              help="Continue a killed or interrupted run from its last completed epoch.")
@click.option("--distribute", is_flag=True,
              help="Train one model on every device this run sees, and on JAX on every "
                   "process of the cluster; the batch size is the global batch.")
@click.option("--num-processes", type=click.IntRange(min=1), metavar="N",
              help="JAX: how many processes train together (with --process-id and "
                   "--coordinator; implies --distribute).")
@click.option("--process-id", type=click.IntRange(min=0), metavar="I",
              help="JAX: this process's index, 0 to N-1; process 0 writes the run folder.")
@click.option("--coordinator", metavar="HOST:PORT",
              help="JAX: where process 0 listens for the others.")
@click.option("--cpu-devices", type=click.IntRange(min=1), metavar="N",
              help="Split the CPU into N logical devices (to try --distribute without GPUs).")
@click.pass_context
def train(ctx: click.Context, model_name, config_file, sets, epochs, batch_size, learning_rate,
          seed, max_train_samples, max_test_samples, data_dir, run_dir, runs_root, device,
          tensorboard, deterministic, snapshots, resume, distribute, num_processes, process_id,
          coordinator, cpu_devices) -> None:
    """Train a model from a YAML config and write a run folder."""
    from mnist_seq import launch

    request = launch.TrainRequest(
        model_name, config_file, sets,
        {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
         "seed": seed, "deterministic": deterministic, "max_train_samples": max_train_samples,
         "max_test_samples": max_test_samples, "snapshots": snapshots}, run_dir, runs_root, resume)
    options = _options(ctx, device=device, data_dir=data_dir, tensorboard=tensorboard,
                       command=shlex.join(["mnist-seq", *sys.argv[1:]]),
                       distribute=launch.distribute_options(
                           distribute, num_processes, process_id, coordinator, cpu_devices))
    run = launch.train(request, options, sys.argv[1:], log=click.echo)
    if run is not None:
        click.echo(f"Wrote {run.path}")


def _options(ctx: click.Context, **given):
    """The runtime options of this command: what it was given, and --debug."""
    from mnist_seq.options import RuntimeOptions

    return RuntimeOptions(debug=ctx.obj["debug"], backend=ctx.obj.get("backend"), **given)


@cli.command()
@backend_option
@click.argument("run_or_model", metavar="RUN_DIR|MODEL.keras")
@click.option("--data-dir", metavar="DIR", help="Folder with the MNIST files (as for train).")
@click.option("--max-test-samples", type=click.IntRange(min=1), metavar="N",
              help="Score only the first N test samples.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_context
def evaluate(ctx: click.Context, run_or_model, data_dir, max_test_samples, as_json) -> None:
    """Test loss and accuracy, per-class figures, confusion matrix and worst errors."""
    import json

    from mnist_seq.evaluation import evaluate as run_evaluation
    from mnist_seq.evaluation import format_report

    result = run_evaluation(run_or_model, _options(ctx, data_dir=data_dir), max_test_samples)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(format_report(result))
    click.echo("\nWrote " + ", ".join(result["files"]) + " and evaluation.json")


@cli.command()
@backend_option
@click.argument("model", metavar="RUN_DIR|MODEL.keras")
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...")
@click.option("--save-input", metavar="DIR", help="Write the 28x28 image the model saw.")
@click.option("--json", "as_json", is_flag=True, help="Print the predictions as JSON.")
@click.pass_context
def predict(ctx: click.Context, model, images, save_input, as_json) -> None:
    """Top-3 digits for PNG/JPEG/BMP images (any size or polarity) or .npy arrays."""
    import json

    from mnist_seq.predict import predict_files

    results = predict_files(model, list(images), save_input, _options(ctx))
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    for r in results:
        guesses = ", ".join(f"{t['class']} ({100 * t['probability']:.1f}%)" for t in r["top"])
        saved = f"   [saw {r['saved']}]" if "saved" in r else ""
        click.echo(f"{r['input']}: {guesses}{saved}")


@cli.command("plot-history")
@click.argument("runs", nargs=-1, required=True, metavar="RUN_DIR...")
@click.option("--out", metavar="FILE",
              help="PNG to write (default: curves.png in the run, or ./runs-history.png).")
@click.option("--metric", "metrics", multiple=True, metavar="NAME",
              help="Metric to draw (repeatable; default: loss and accuracy).")
@click.option("--log-loss", is_flag=True, help="Log scale for loss panels.")
def plot_history(runs, out, metrics, log_loss) -> None:
    """Draw loss and accuracy curves, training vs validation, of one or more runs."""
    from mnist_seq.plotting import plot_history_files

    click.echo(f"Wrote {plot_history_files(list(runs), out, tuple(metrics), log_loss)}")


@cli.command()
@backend_option
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_DIR...")
@click.option("--index", type=click.IntRange(min=0), metavar="N",
              help="Which test digit to show (default 0).")
@click.option("--image", metavar="FILE", help="Your own digit instead (PNG/JPEG/BMP/.npy).")
@click.option("--data-dir", metavar="DIR", help="Folder with the MNIST files (as for train).")
@click.option("--map-digits", type=click.IntRange(min=0), default=2000, show_default=True,
              metavar="N", help="Test digits on the map of digits (0: no map).")
@click.pass_context
def inspect(ctx: click.Context, run_dirs, index, image, data_dir, map_digits) -> None:
    """Pictures of how the network sees a digit and what training did, into
    RUN_DIR/inspect/: which pixels decided, the map of digits, and the network as it
    learned where the run kept snapshots (train --snapshots).

    Extra LSTM runs given after the first add their curve to rows-read-accuracy.png."""
    from mnist_seq.errors import ConfigError
    from mnist_seq.inspection import inspect_runs

    if index is not None and image is not None:
        raise ConfigError("give --index or --image, not both")
    for path in inspect_runs(list(run_dirs), index, image, _options(ctx, data_dir=data_dir),
                             map_digits, log=click.echo):
        click.echo(f"Wrote {path}")


@cli.command()
@backend_option
@click.argument("run_dir", metavar="RUN_DIR")
@click.option("--data-dir", metavar="DIR", help="MNIST files, if the run must be evaluated.")
@click.pass_context
def report(ctx: click.Context, run_dir, data_dir) -> None:
    """Write RUN_DIR/report.html: everything about a run in one shareable file."""
    from mnist_seq.report import build_report

    click.echo(f"Wrote {build_report(run_dir, _options(ctx, data_dir=data_dir))}")


@cli.command()
@click.argument("root", default="runs", metavar="[DIR]")
@click.option("--sort", metavar="COLUMN",
              help="name, model, params, epochs, best_val_accuracy, val_accuracy, "
                   "test_accuracy, train_seconds or state (figures sort best first; default: "
                   "name, or val_accuracy for a sweep folder).")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def runs(root, sort, as_json) -> None:
    """List the runs under DIR (default: runs) with their key figures."""
    import json

    from mnist_seq.runs import format_runs, list_runs

    rows = list_runs(root, sort)
    click.echo(json.dumps(rows, indent=2) if as_json else format_runs(rows))


@cli.command()
@backend_option
@click.argument("spec", metavar="SPEC.yaml")
@click.option("--sweep-dir", metavar="DIR",
              help="The sweep folder: new, or an existing sweep to continue (default: "
                   "sweeps/SPEC-NAME).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Trials at once on this machine, each in its own process.")
@click.option("--storage", metavar="URL",
              help="A database several machines share, e.g. postgresql://user:pw@host/db "
                   "(default: a SQLite file in the sweep folder).")
@click.option("--study", metavar="NAME", help="The study's name (default: the spec's name).")
@click.option("--prune", is_flag=True,
              help="Stop poor trials early from their per-epoch validation accuracy.")
@click.option("--heartbeat", type=click.IntRange(min=1), default=60, show_default=True,
              metavar="SECONDS",
              help="With --storage: how often a trial says it is alive; one silent for "
                   "twice this is continued by another machine.")
@click.option("--data-dir", metavar="DIR", help="Folder with the MNIST files (as for train).")
@click.option("--device", type=click.Choice(DEVICES), default="auto",
              show_default=True, help="Where to train.")
@click.pass_context
def sweep(ctx: click.Context, spec, sweep_dir, workers, storage, study, prune, heartbeat,
          data_dir, device) -> None:
    """Train many runs of one config with settings chosen by Optuna; the best trial's
    config goes to best.yaml and only its model is scored on the test set."""
    from mnist_seq.study import require_optuna
    from mnist_seq.sweep import SweepOptions, run_sweep

    require_optuna()
    options = _options(ctx, device=device, data_dir=data_dir,
                       command=shlex.join(["mnist-seq", *sys.argv[1:]]))
    best = run_sweep(spec, sweep_dir, SweepOptions(workers, storage, study, prune, heartbeat),
                     options, log=click.echo)
    test = best["test_accuracy"]
    click.echo(f"Best trial {best['trial']}: validation accuracy {best['val_accuracy']:.2%}"
               + (f", test accuracy {test:.2%} (its model alone scored)" if test is not None
                  else "") + f"; settings {best['params']}; run folder {best['run']}")
    if best.get("note"):
        click.echo(f"Note: {best['note']}")


@cli.command()
@backend_option
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_DIR...")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 makes the page reachable from the network.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a browser.")
@click.option("--device", type=click.Choice(DEVICES), default="auto",
              show_default=True, help="Where the models run.")
@click.option("--body-timeout", type=click.FloatRange(min=0.1), default=10.0,
              show_default=True, metavar="SECONDS",
              help="How long a client has to send its image; a slower one gets 408.")
@click.pass_context
def serve(ctx: click.Context, run_dirs, host, port, open_browser, device,
          body_timeout) -> None:
    """A local web page: draw a digit and watch each run read it."""
    from mnist_seq.serve import require_web
    from mnist_seq.serve import serve as run_server

    require_web()
    run_server(list(run_dirs), host, port, open_browser, _options(ctx, device=device),
               log=click.echo, body_seconds=body_timeout)


@cli.command()
@click.argument("run_or_model", metavar="RUN_DIR|MODEL.keras")
@click.option("--format", "formats", multiple=True, required=True,
              type=click.Choice(["onnx", "litert", "saved_model", "web"]),
              help="What to write (repeatable): onnx, litert (.tflite), saved_model "
                   "(TensorFlow), web (a static draw-a-digit page).")
@click.option("--out", metavar="DIR", help="Folder to write into (default: RUN_DIR/export).")
@click.option("--quantize", type=click.Choice(["float16", "int8"]),
              help="Smaller files: int8 (onnx, litert, web; calibrated on training images) "
                   "or float16 (litert).")
@click.option("--force", is_flag=True, help="Replace files of the same name in the folder.")
@click.option("--data-dir", metavar="DIR", help="MNIST files for the check (as for train).")
@click.pass_context
def export(ctx: click.Context, run_or_model, formats, out, quantize, force, data_dir) -> None:
    """Write the model for use outside mnist-seq, each file checked against Keras on the
    test set (export/export.json)."""
    from mnist_seq.export import ExportRequest, format_table
    from mnist_seq.export import export as run_export

    request = ExportRequest(run_or_model, tuple(formats), out, quantize, force)
    entries = run_export(request, _options(ctx, data_dir=data_dir), log=click.echo)
    click.echo(format_table(entries))


@cli.command()
@click.option("--data-dir", metavar="DIR", help="Folder with the MNIST files (as for train).")
def doctor(data_dir) -> None:
    """What this machine offers: CPU, GPUs, backends, extras, data, speed plans."""
    from mnist_seq.doctor import report

    for line in report(data_dir):
        click.echo(line)


def main() -> None:
    """Console entry point."""
    try:
        cli(prog_name="mnist-seq")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if isinstance(e.code, str):
            click.echo(e.code, err=True)
    else:
        code = 0
    if "keras" in sys.modules:
        # Every file is written and closed by now; the backend's teardown at interpreter
        # exit would take another half second (TensorFlow's), so leave at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
