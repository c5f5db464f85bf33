"""The machine named: the CPU read from /proc/cpuinfo, recorded by every run, and
`mnist-seq doctor`'s lines."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mnist_seq.machine import parse_cpuinfo

ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx fma avx2 bmi2
processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx fma avx2 bmi2
"""
SAPPHIRE_RAPIDS = ("vendor_id : GenuineIntel\nmodel name : Intel(R) Xeon(R) Processor\n"
                   "flags : avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile\n")
GRAVITON = "processor : 0\nFeatures : fp asimd evtstrm sve bf16\nCPU implementer : 0x41\n"


def test_the_cpu_and_its_instruction_sets_are_read():
    zen3 = parse_cpuinfo(ZEN3, 2)
    assert (zen3.vendor, zen3.model, zen3.cores) == ("AuthenticAMD", "AMD EPYC 7B13", 2)
    assert zen3.flags == ("avx2", "fma") and not zen3.bf16
    assert zen3.describe() == "AMD EPYC 7B13, 2 cores: AVX2, FMA"
    intel = parse_cpuinfo(SAPPHIRE_RAPIDS, 4)
    assert intel.flags == ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") and intel.bf16
    assert intel.describe().endswith("AVX2, FMA, AVX-512F, AVX-512 BF16, AMX")
    arm = parse_cpuinfo(GRAVITON, 8)
    assert arm.flags == ("asimd", "sve", "bf16") and arm.bf16 and arm.vendor == "0x41"
    assert parse_cpuinfo("", 1).flags == ()


def test_doctor_names_the_machine_and_trains_nothing(data_dir, tmp_path):
    code = ("import sys; from click.testing import CliRunner; from mnist_seq.cli import cli; "
            f"r = CliRunner().invoke(cli, ['doctor', '--data-dir', {str(data_dir)!r}]); "
            "print(r.output); sys.exit(r.exit_code)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert {p.name for p in tmp_path.iterdir()} <= {"keras-home"}  # no run folder made
    assert lines[0].startswith("CPU: ") and " cores: " in lines[0]
    assert any(line.startswith("Backend tensorflow") and "GPUs " in line for line in lines)
    assert any(line.startswith("MNIST: ") and str(data_dir) in line and "checked" in line
               for line in lines)
    if any(line.startswith("Backend jax") for line in lines):
        assert any(line.startswith("JAX compiled steps: kept in ") for line in lines)
    from mnist_seq.config import bundled_configs

    plans = [line.strip() for line in lines if line.startswith("  ")]
    assert [p.split(":")[0] for p in plans] == list(bundled_configs())
    assert all("TensorFlow, precision" in p for p in plans)


def test_doctor_says_where_the_data_is_not(tmp_path):
    from click.testing import CliRunner

    from mnist_seq.cli import cli

    result = CliRunner().invoke(cli, ["doctor", "--data-dir", str(tmp_path / "none")])
    assert result.exit_code == 0, result.output
    assert any(line.startswith("MNIST: not found: data path from --data-dir does not exist")
               for line in result.output.splitlines())


def test_doctor_says_when_jax_cannot_keep_its_steps(tmp_path, monkeypatch):
    pytest.importorskip("jax")
    from mnist_seq.doctor import jax_cache

    monkeypatch.setenv("MNIST_SEQ_CACHE", str(tmp_path / "cache"))
    assert jax_cache().startswith(f"kept in {tmp_path / 'cache' / 'jax'}")
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("MNIST_SEQ_CACHE", str(tmp_path / "a-file"))
    assert jax_cache().startswith(f"not kept: {tmp_path / 'a-file' / 'jax'}")
    assert not (tmp_path / "cache").exists()  # the doctor makes nothing


def test_a_run_records_its_cpu(tmp_path, data_dir):
    from test_cli import SMOKE, run

    result = run("train", "--model", "mlp", *SMOKE, "--data-dir", str(data_dir),
                 "--run-dir", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    cpu = json.loads((tmp_path / "r" / "metrics.json").read_text())["cpu"]
    assert cpu["cores"] >= 1 and cpu["model"] and cpu["kind"].startswith(cpu["model"])
    speed = next(line for line in result.output.splitlines() if line.startswith("Speed: "))
    assert speed.endswith(f"CPU {cpu['kind']}")
