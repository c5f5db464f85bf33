"""How a run trains fast: a plan decided from facts, then applied.

`plan_speed` is a pure function from (config, machine, backend, distributed) to
a `SpeedPlan` with the line that describes it; `apply_before_build`,
`apply_to_model` and `fit_inputs` carry the plan out. The TensorFlow-only tricks
(op threads, fused optimizer updates, one-call epochs) live in `tf_speed` and are
planned only for TensorFlow on a CPU in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from mnist_seq.config import OPTIMIZERS
from mnist_seq.kinds import KINDS

BACKEND_NAMES = {"tensorflow": "TensorFlow", "jax": "JAX"}
# Optimizers whose update has a fused TensorFlow op (tf_speed.fuse_optimizer_updates).
FUSABLE = ("adam", "adamw", "rmsprop")
# Validation batch for one-call epochs: bigger batches cost the MLP less per epoch, with
# the same figures but for float rounding.
ONE_CALL_VAL_BATCH = 2048


@dataclass(frozen=True)
class Machine:
    """Facts about where a run trains."""

    gpu: bool
    cores: int = 2
    bf16: bool = False  # the CPU computes bfloat16 natively (AVX512-BF16 or AMX)
    onednn: bool | None = None  # TensorFlow's oneDNN CPU kernels run (None: cannot say)
    onednn_user_off: bool = False  # ... because TF_ENABLE_ONEDNN_OPTS=0
    cpu: str = ""  # the CPU in words (machine.CPU.describe), for the Speed: line
    onednn_cap: str | None = None  # ONEDNN_MAX_CPU_ISA, where set (machine.onednn_isa_cap)


@dataclass(frozen=True)
class SpeedPlan:
    precision: str  # Keras dtype policy
    unroll: bool  # LSTMs written out over the 28 rows when training
    jit_compile: bool | str  # XLA: True, False, or "auto" (Keras decides)
    steps_per_execution: int
    op_threads: tuple[int, int] | None  # (intra, inter) for TensorFlow, None: its default
    fused_updates: bool  # one TensorFlow op per optimizer update
    one_call_epochs: bool  # each epoch in one TensorFlow call
    validation_batch: int | None  # None: the training batch
    pixels_in_graph: bool  # training images go to TensorFlow as uint8, scaled per batch
    line: str  # the plan in words, for the Speed: line
    # Stacked LSTMs trained row by row across their layers (lstm_rows.step_layers_together)
    layers_together: bool = False


def machine_facts(on_gpu: bool, backend: str, cores: int | None = None) -> Machine:
    """What the plan needs to know about this machine (Keras must be set up); `cores`:
    how many this process may use, if not all."""
    from mnist_seq.machine import BF16_ISA_CAPS, cpu, onednn_isa_cap

    onednn = cap = None
    if backend == "tensorflow" and not on_gpu:
        from mnist_seq.tf_speed import onednn_enabled

        onednn = onednn_enabled()
        # Capped below its bfloat16 instructions, oneDNN emulates bfloat16: float32 is
        # faster.
        cap = onednn_isa_cap()
    return Machine(gpu=on_gpu, cores=cores or os.cpu_count() or 1,
                   bf16=cpu().bf16 and (cap is None or cap in BF16_ISA_CAPS),
                   onednn=onednn,
                   onednn_user_off=os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0",
                   cpu=cpu().describe(), onednn_cap=cap)


def choose_precision(setting: str, model_type: str, machine: Machine,
                     backend: str = "tensorflow") -> str:
    """Resolve `train.precision: auto`. Measured on a 2-core AVX512-BF16 CPU: bfloat16
    made LeNet about 1.6x faster on TensorFlow, 1.12x slower on JAX, and the MLP no
    faster; LSTMs stay float32 (bf16 hurts their recurrence)."""
    if setting != "auto":
        return setting
    if (KINDS[model_type].bf16_on_cpu and not machine.gpu and machine.bf16
            and backend == "tensorflow"):
        return "mixed_bfloat16"
    return "float32"


def choose_xla(setting: str, on_gpu: bool, backend: str = "tensorflow") -> bool | str:
    """Resolve `train.xla` into Keras's `jit_compile`. "auto" leaves XLA off for
    TensorFlow on a CPU: on this project's 2-core CPU it made LeNet several times
    slower (XLA's CPU convolutions lose to oneDNN), the looped LSTM slower than the
    unrolled one without XLA, and the MLP 1.2-1.5x faster per epoch but about 1 s
    slower to start, about even over its 5 epochs, with a lower seed-0 accuracy
    (docs/performance.md). Elsewhere "auto" leaves it to Keras: on a GPU, XLA except
    where a layer cannot be compiled (the cuDNN LSTM); on JAX, which compiles
    everything with XLA, always."""
    if setting != "auto":
        return setting == "enabled"
    return "auto" if on_gpu or backend != "tensorflow" else False


def plan_speed(config: dict[str, Any], machine: Machine, backend: str = "tensorflow",
               distributed: bool = False) -> SpeedPlan:
    """Decide how this run trains fast. Pure: it sets nothing."""
    mcfg, tcfg = config["model"], config["train"]
    kind = KINDS[mcfg["type"]]
    tf_cpu = backend == "tensorflow" and not machine.gpu and not distributed
    precision = choose_precision(tcfg["precision"], mcfg["type"], machine, backend)
    # On a CPU, unrolling the 28 steps beats TensorFlow's while-loop: the 3-layer LSTM
    # trained 1.39x faster per epoch for 2.6 s more compiling. On JAX it is the other
    # way round: its scan trained 3x faster than the unrolled graph, and compiled 20 s
    # sooner (docs/performance.md). On a GPU the cuDNN kernel is faster still, and
    # unrolling would rule it out.
    unroll = kind.recurrent and not machine.gpu and backend == "tensorflow"
    xla = choose_xla(tcfg["xla"], machine.gpu, backend)
    # The unrolled graph has many small ops that do not depend on each other (the
    # gates of one cell; with the layers row by row, layer 2 at row t beside layer 1
    # at row t+1): on 2 cores, two ops at once on one thread each beat one op at a
    # time on two threads in every paired A/B here; the CNN and the MLP, with few big
    # ops, were slower or even (README, Performance).
    op_threads = (max(1, machine.cores // 2), 2) if unroll and tf_cpu else None
    # Keras finishes each LSTM over all 28 rows before the next starts, so the
    # unrolled graph waits at every layer; row by row across the layers, the 3-layer
    # LSTM trained 1.76x as many samples a second, and 1.2x on JAX in one scan
    # (docs/performance.md). Not measured on a GPU or over several processes.
    together = (len(mcfg.get("units", [])) > 1 and kind.recurrent and not machine.gpu
                and not distributed and (unroll or backend == "jax"))
    # The MLP's steps are so small that fixed costs per batch rule its speed on a CPU:
    # each epoch in one TensorFlow call, on batches sliced inside the graph (1.15x here,
    # 1.25x with validation in batches of 2048; LeNet gained nothing from it). Fused
    # optimizer updates paid for the MLP and LeNet, 1.14x each (LeNet's Adam state is
    # 1.3M floats that ten or so ops read and write per step otherwise). LSTMs' steps
    # are ruled by many small recurrent ops: not measured, left as they were.
    # Snapshots after named batches need Keras to stop after every batch.
    per_batch = tcfg["snapshots"] and kind.snapshot_batches
    one_call = kind.one_call_epochs and tf_cpu and not per_batch
    fused = kind.fused_updates and tf_cpu and tcfg["optimizer"] in FUSABLE
    # Under TensorFlow's MirroredStrategy, Keras's loop over several steps per call fails
    # in fit (an unfed placeholder in its while loop, Keras 3.15.1); one step per call works.
    mirrored = distributed and backend == "tensorflow"
    spe = 1 if one_call or mirrored or per_batch else tcfg["steps_per_execution"]
    plan = SpeedPlan(precision=precision, unroll=unroll, jit_compile=xla,
                     steps_per_execution=spe, op_threads=op_threads, fused_updates=fused,
                     one_call_epochs=one_call,
                     validation_batch=ONE_CALL_VAL_BATCH if one_call else None,
                     pixels_in_graph=backend == "tensorflow", line="",
                     layers_together=together)
    return replace(plan, line=_line(plan, config, machine, backend, per_batch))


def _line(plan: SpeedPlan, config: dict[str, Any], machine: Machine, backend: str,
          per_batch: bool) -> str:
    """The plan in words, for the Speed: line."""
    mcfg, spe = config["model"], plan.steps_per_execution
    notes = [BACKEND_NAMES.get(backend, backend), f"precision {plan.precision}",
             "each epoch in one call, batches sliced in the graph" if plan.one_call_epochs
             else f"{spe} step{'s' if spe > 1 else ''} per execution"
             + (" (snapshots after named batches)" if per_batch else ""),
             _xla_words(plan.jit_compile, backend)]
    if plan.op_threads:
        intra = plan.op_threads[0]
        notes.append(f"2 ops at a time, {intra} thread{'s' if intra > 1 else ''} each")
    if machine.onednn is not None and not machine.gpu and backend == "tensorflow":
        cap = f" up to {machine.onednn_cap} (ONEDNN_MAX_CPU_ISA)" if machine.onednn_cap else ""
        notes.append(f"oneDNN on{cap}" if machine.onednn else
                     "oneDNN off" + (" (TF_ENABLE_ONEDNN_OPTS=0)" if machine.onednn_user_off
                                     else ""))
    if KINDS[mcfg["type"]].recurrent:
        notes.append(_lstm_kernel(machine, mcfg, plan.unroll, plan.layers_together))
    if plan.fused_updates:
        notes.append(f"fused {OPTIMIZERS[config['train']['optimizer']]} updates")
    if machine.cpu and not machine.gpu:
        notes.append(f"CPU {machine.cpu}")
    return ", ".join(notes)


def _lstm_kernel(machine: Machine, mcfg: dict[str, Any], unroll: bool,
                 together: bool) -> str:
    if not machine.gpu:
        how = ("unrolled over the 28 rows for training, Grappler passes that change no "
               "arithmetic off") if unroll else "Keras's loop over the 28 rows"
        if together:
            how += ", the layers row by row together" if unroll else \
                ", for training one scan with the layers row by row together"
        return f"LSTM kernel: generic, {how} (CPU; cuDNN needs a GPU)"
    if mcfg["recurrent_dropout"]:
        return "LSTM kernel: generic, because recurrent_dropout > 0 rules out cuDNN"
    return "LSTM kernel: cuDNN (tanh/sigmoid, no recurrent dropout, not unrolled)"


def _xla_words(xla: bool | str, backend: str) -> str:
    if backend == "jax":  # Keras's "auto" compiles every step on JAX
        return "XLA off: JAX runs eagerly, many times slower" if xla is False else "XLA on"
    return {True: "XLA on", False: "XLA off", "auto": "XLA where Keras can use it"}[xla]


def apply_before_build(plan: SpeedPlan) -> list[str]:
    """Carry out the process-wide parts of the plan (precision policy, op threads) before
    the model is built. Returns notes on what could not be done."""
    import keras

    keras.mixed_precision.set_global_policy(plan.precision)
    notes = []
    if plan.unroll:
        from mnist_seq import tf_speed

        tf_speed.rewrites_off(tf_speed.IDLE_REWRITES)
    if plan.op_threads:
        from mnist_seq import tf_speed

        if not tf_speed.set_op_threads(*plan.op_threads):
            notes.append("op threads left as they were: TensorFlow had started already in "
                         "this process")
    return notes


def apply_to_model(plan: SpeedPlan, model) -> list[str]:
    """Carry out the parts of the plan that change a compiled model (LSTMs unrolled for
    training, fused updates). Returns notes on what could not be done."""
    from mnist_seq import backend, lstm_rows, tf_speed

    notes = []
    if plan.unroll:
        tf_speed.unroll_for_training(model)
    if plan.layers_together and not lstm_rows.step_layers_together(model, backend.name()):
        notes.append("the LSTM layers train one after another: the model is not a plain "
                     "chain of LSTMs")
    if not plan.fused_updates:
        return notes
    if tf_speed.fuse_optimizer_updates(model.optimizer, model.trainable_variables):
        return notes
    return [*notes, "fused optimizer updates skipped: this Keras release lacks the optimizer "
            "slots they use; training runs Keras's own updates"]


def fit_inputs(plan: SpeedPlan, model, x, y, batch_size: int, seed: int) -> dict[str, Any]:
    """The training data (`x` as uint8 pixels) as `model.fit` keyword arguments, in the
    form the plan wants."""
    if plan.one_call_epochs:
        from mnist_seq import tf_speed

        # Shuffled inside each call, so Keras is told not to shuffle.
        return {"x": tf_speed.epochs_in_one_call(model, x, y, batch_size, seed),
                "shuffle": False}
    if plan.pixels_in_graph:
        from mnist_seq import tf_speed

        return {"x": tf_speed.pixel_batches(x, y, batch_size, seed), "shuffle": False}
    from mnist_seq.data import to_float

    return {"x": to_float(x), "y": y, "batch_size": batch_size}
