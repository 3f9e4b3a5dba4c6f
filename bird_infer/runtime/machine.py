"""What machine this is: CPU model, cores and the vector extensions that decide how fast the folds run.

Kaggle's CPU notebooks show 4 vCPUs (2 physical cores) and are likely AVX2-only, without AVX-512, bf16 or
AMX; every run logs what it actually found, so that a slow run can be explained.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    physical_cores: int | None
    """Distinct (package, core) pairs; None where the OS does not say."""
    logical_cores: int
    usable_cores: int
    """Cores this process may run on (affinity)."""
    flags: tuple[str, ...]
    """The subset of :data:`FLAGS_OF_INTEREST` the CPU has."""

    @property
    def has_bf16(self) -> bool:
        return "avx512_bf16" in self.flags or "amx_bf16" in self.flags

    def line(self) -> str:
        phys = "?" if self.physical_cores is None else str(self.physical_cores)
        return (
            f"CPU: {self.model}; {phys} physical / {self.logical_cores} logical cores ({self.usable_cores} usable); "
            f"{' '.join(self.flags) or 'no AVX2'}; bf16 {'yes' if self.has_bf16 else 'no'}"
        )


def cpu_info(cpuinfo: str | None = None) -> CpuInfo:
    """Read ``/proc/cpuinfo`` (or the text given); elsewhere only the platform's processor name.

    ``BIRD_INFER_CPU_FLAGS`` (e.g. ``"avx2 fma"``), when set, stands in for the CPU's flags: ``--precision auto``
    then plans as it would on such a CPU."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.exists() else ""
    model, flags, cores = platform.processor() or platform.machine(), set(), set()
    phys_id = core_id = None
    for line in cpuinfo.splitlines():
        key, _, value = (s.strip() for s in line.partition(":"))
        if key == "model name":
            model = value
        elif key == "flags":
            flags.update(value.split())
        elif key == "physical id":
            phys_id = value
        elif key == "core id":
            core_id = value
        elif not key and phys_id is not None and core_id is not None:  # a blank line ends one processor
            cores.add((phys_id, core_id))
            phys_id = core_id = None
    if phys_id is not None and core_id is not None:
        cores.add((phys_id, core_id))
    override = os.environ.get("BIRD_INFER_CPU_FLAGS")
    if override is not None:  # rehearse another machine (e.g. Kaggle's, without bf16): these flags, no others
        flags = set(override.replace(",", " ").split())
    logical = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    return CpuInfo(
        model=model or "unknown",
        physical_cores=len(cores) or None,
        logical_cores=logical,
        usable_cores=usable,
        flags=tuple(f for f in FLAGS_OF_INTEREST if f in flags),
    )


def available_cores() -> int:
    """Cores this process may run on (affinity-aware; Kaggle shows 4 vCPUs)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def peak_memory_mb() -> float:
    """This process's peak resident memory in MiB (0.0 where the OS does not say).

    Linux: ``VmHWM`` from /proc, which starts afresh at exec. (``getrusage``'s ``ru_maxrss`` is carried
    across exec on Linux, so a freshly spawned worker would report its parent's peak.)
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def available_memory_bytes() -> int | None:
    """Memory the kernel says a new allocation can get without swapping (Linux ``MemAvailable``); None elsewhere."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
