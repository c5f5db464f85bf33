"""The speed plan: a pure decision from (config, machine, backend, distributed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mnist_seq.config import validate
from mnist_seq.speed import Machine, choose_precision, choose_xla, plan_speed

CPU = Machine(gpu=False, cores=2, bf16=True, onednn=True)
GPU = Machine(gpu=True, cores=16)


def plan(model_type: str, machine: Machine = CPU, backend: str = "tensorflow",
         distributed: bool = False, **model):
    config = validate({"model": {"type": model_type, **model}})
    return plan_speed(config, machine, backend, distributed)


def test_auto_precision_keeps_lstms_and_gpus_in_float32():
    assert choose_precision("auto", "cnn", CPU) == "mixed_bfloat16"
    assert choose_precision("auto", "lstm", CPU) == "float32"
    assert choose_precision("auto", "mlp", CPU) == "float32"
    assert choose_precision("auto", "cnn", GPU) == "float32"
    assert choose_precision("mixed_float16", "lstm", GPU) == "mixed_float16"
    assert choose_precision("auto", "cnn", Machine(gpu=False, bf16=False)) == "float32"
    # bfloat16 made LeNet slower on JAX on the same CPU.
    assert choose_precision("auto", "cnn", CPU, "jax") == "float32"


@pytest.mark.parametrize(("cap", "precision"), [
    (None, "mixed_bfloat16"), ("avx2", "float32"), ("AVX512_CORE", "float32"),
    ("AVX512_CORE_AMX", "mixed_bfloat16"),
])
def test_onednn_capped_below_its_bfloat16_instructions_trains_cnns_in_float32(
        monkeypatch, cap, precision):
    from mnist_seq import machine
    from mnist_seq.speed import machine_facts

    bf16_cpu = machine.CPU("GenuineIntel", "A CPU", 2, ("avx2", "fma", "avx512f", "amx_bf16"))
    monkeypatch.setattr(machine, "cpu", lambda: bf16_cpu)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if cap:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    else:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    p = plan("cnn", machine_facts(False, "tensorflow"))
    assert p.precision == precision
    said = f"oneDNN on up to {cap.upper()} (ONEDNN_MAX_CPU_ISA)" if cap else "oneDNN on,"
    assert said in p.line
    # JAX does not use oneDNN: the cap says nothing there.
    assert machine_facts(False, "jax").bf16


def test_xla_is_off_for_tensorflow_on_cpus_unless_asked_for():
    assert choose_xla("auto", on_gpu=False) is False
    assert choose_xla("auto", on_gpu=True) == "auto"
    assert choose_xla("auto", on_gpu=False, backend="jax") == "auto"
    assert choose_xla("disabled", on_gpu=True) is False
    assert choose_xla("enabled", on_gpu=False) is True


@pytest.mark.parametrize(("machine", "units", "recurrent_dropout", "unroll", "kernel"), [
    (CPU, [128], 0.0, True, "generic, unrolled"),
    (CPU, [128], 0.1, True, "generic, unrolled"),
    (CPU, [128, 128], 0.0, True, "generic, unrolled"),
    (GPU, [128], 0.0, False, "LSTM kernel: cuDNN"),
    (GPU, [128], 0.1, False, "generic, because recurrent_dropout > 0"),
])
def test_the_plan_says_which_lstm_kernel_runs(machine, units, recurrent_dropout, unroll,
                                              kernel):
    p = plan("lstm", machine, units=units, recurrent_dropout=recurrent_dropout)
    assert p.unroll is unroll
    assert kernel in p.line and p.precision == "float32"
    # Stacked LSTMs train row by row across their layers on TensorFlow's CPU path.
    together = unroll and len(units) > 1
    assert p.layers_together is together
    assert ("the layers row by row together" in p.line) is together


@pytest.mark.parametrize(("model_type", "machine", "fused", "one_call"), [
    ("mlp", CPU, True, True), ("mlp", GPU, False, False), ("cnn", CPU, True, False),
    ("cnn", GPU, False, False), ("lstm", CPU, False, False),
])
def test_small_step_tricks_go_where_they_paid_on_a_cpu(model_type, machine, fused, one_call):
    p = plan(model_type, machine)
    assert p.fused_updates is fused and p.one_call_epochs is one_call
    assert ("each epoch in one call" in p.line) is one_call
    assert ("64 steps per execution" in p.line) is not one_call
    assert (p.steps_per_execution == 1) is one_call
    assert ("fused" in p.line) is fused
    assert (p.validation_batch is not None) is one_call


def test_the_line_describes_the_whole_plan():
    p = plan("mlp")  # the default optimizer, Adam
    assert p.line == ("TensorFlow, precision float32, each epoch in one call, batches sliced "
                      "in the graph, XLA off, oneDNN on, fused Adam updates")
    p = plan("lstm", Machine(gpu=False, cores=4, onednn=False, onednn_user_off=True))
    assert p.op_threads == (2, 2)
    assert p.line == ("TensorFlow, precision float32, 64 steps per execution, XLA off, 2 ops "
                      "at a time, 2 threads each, oneDNN off (TF_ENABLE_ONEDNN_OPTS=0), "
                      "LSTM kernel: generic, unrolled over the 28 rows for training, "
                      "Grappler passes that change no arithmetic off (CPU; cuDNN needs a GPU)")
    sgd = plan_speed(validate({"model": {"type": "cnn"}, "train": {"optimizer": "sgd"}}), CPU)
    assert not sgd.fused_updates and "fused" not in sgd.line
    assert plan("lstm", backend="jax").line == (
        "JAX, precision float32, 64 steps per execution, XLA on, LSTM kernel: generic, "
        "Keras's loop over the 28 rows (CPU; cuDNN needs a GPU)")


@pytest.mark.parametrize(("backend", "distributed"), [("jax", False), ("tensorflow", True),
                                                      ("jax", True)])
@pytest.mark.parametrize("model_type", ["mlp", "cnn", "lstm"])
def test_no_tensorflow_trick_off_tensorflow_or_under_a_distribution(model_type, backend,
                                                                    distributed):
    stacked = {"units": [128, 128]} if model_type == "lstm" else {}
    p = plan(model_type, CPU, backend, distributed, **stacked)
    assert not (p.fused_updates or p.one_call_epochs or p.op_threads)
    # MirroredStrategy fails with Keras's loop over several steps per call.
    mirrored = backend == "tensorflow" and distributed
    assert p.steps_per_execution == (1 if mirrored else 64) and p.validation_batch is None
    assert ("1 step per execution" in p.line) is mirrored
    # Unrolled LSTMs and bfloat16 CNNs paid on TensorFlow on a CPU, and lost on JAX.
    tf = backend == "tensorflow"
    assert p.unroll is (model_type == "lstm" and tf)
    # Stacked LSTMs in one scan on JAX, in one process (the TensorFlow way needs unrolling).
    assert p.layers_together is (model_type == "lstm" and not tf and not distributed)
    assert p.precision == ("mixed_bfloat16" if model_type == "cnn" and tf else "float32")


def test_planning_loads_nothing():
    # A fresh process: in this one, earlier tests may have loaded Keras already.
    code = ("import sys; from mnist_seq.config import load_config; "
            "from mnist_seq.speed import Machine, plan_speed; "
            "[plan_speed(load_config(n), Machine(gpu=False)) for n in ('mlp', 'cnn', 'lstm')]; "
            "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
