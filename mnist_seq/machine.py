"""The CPU a run trains on, named: vendor, model, cores, and the instruction sets that
decide how fast Keras runs on it (AVX2, AVX-512, bfloat16 units): a speed figure means
little without them, so metrics.json and the Speed: line carry them."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from dataclasses import asdict, dataclass

# /proc/cpuinfo flag -> the name people know it by, in the order they are told.
FLAGS = {"avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512F", "avx512_bf16": "AVX-512 BF16",
         "amx_bf16": "AMX", "asimd": "NEON", "sve": "SVE", "bf16": "BF16"}


# oneDNN's instruction-set caps (ONEDNN_MAX_CPU_ISA) under which it still computes
# bfloat16 natively; any other cap leaves it emulating bfloat16, slower than float32.
BF16_ISA_CAPS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX",
                 "AVX512_CORE_AMX_FP16", "AVX10_1_512", "AVX10_1_512_AMX",
                 "AVX10_1_512_AMX_FP16", "ALL", "DEFAULT")


def onednn_isa_cap() -> str | None:
    """The highest instruction set oneDNN (TensorFlow's CPU kernels) may use, where the
    environment caps it (`ONEDNN_MAX_CPU_ISA=AVX2`, as on an AVX2-only CPU), else None."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return cap.strip().upper() if cap and cap.strip() else None


@dataclass(frozen=True)
class CPU:
    """One CPU's facts (`flags` are the keys of FLAGS it has)."""

    vendor: str
    model: str
    cores: int
    flags: tuple[str, ...]

    @property
    def bf16(self) -> bool:
        """Whether it computes bfloat16 natively; elsewhere it is emulated, slower than
        float32."""
        return bool({"avx512_bf16", "amx_bf16", "bf16"} & set(self.flags))

    def describe(self) -> str:
        """"Intel Xeon, 2 cores: AVX2, FMA, AVX-512F" (the model, as the CPU names it)."""
        sets = ", ".join(FLAGS[f] for f in self.flags) or "none of " + ", ".join(
            list(FLAGS.values())[:3])
        return f"{self.model}, {self.cores} core{'s' if self.cores != 1 else ''}: {sets}"

    def as_dict(self) -> dict:
        return {**asdict(self), "flags": list(self.flags), "kind": self.describe()}


def parse_cpuinfo(text: str, cores: int) -> CPU:
    """The CPU described by the text of /proc/cpuinfo (x86 or ARM)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:  # the first processor speaks for all
            fields[key.strip()] = value.strip()
    have = set((fields.get("flags") or fields.get("Features") or "").split())
    vendor = fields.get("vendor_id") or fields.get("CPU implementer") or platform.machine()
    model = fields.get("model name") or fields.get("Model") or platform.processor() or vendor
    return CPU(vendor, model, cores, tuple(f for f in FLAGS if f in have))


@functools.cache
def _cpuinfo() -> str | None:
    """The text of /proc/cpuinfo, read once (None elsewhere than Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


@functools.cache
def cpu() -> CPU:
    """This machine's CPU (read once; elsewhere than Linux, what `platform` says)."""
    cores = os.cpu_count() or 1
    text = _cpuinfo()
    if text is None:
        return CPU(platform.machine(), platform.processor() or platform.machine(), cores, ())
    return parse_cpuinfo(text, cores)


@functools.cache
def fingerprint() -> str:
    """A short name for this exact instruction set (the model and every cpuinfo flag, not
    only FLAGS): code compiled for one CPU may stop with an illegal instruction on
    another, so caches of compiled code are kept apart by it."""
    flags = next((line for line in (_cpuinfo() or "").splitlines()
                  if line.startswith(("flags", "Features"))), "")
    key = f"{platform.machine()}|{cpu().model}|{flags}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]
