"""The machine a figure was measured on (PROTOCOLS.md section 5), and the cores this process may use.

Imports nothing of vestis, so every layer may use it: extraction and FAISS size their thread pools with
`cpu_count`; evaluation reports and the benchmarks name their machine with `machine_info` / `format_machine`.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from importlib import metadata

# the distributions a report names the versions of (read from their metadata, nothing is imported)
VERSIONED = ("vestis", "numpy", "torch", "torchvision", "timm", "faiss-cpu", "faiss-gpu", "pymilvus", "onnxruntime",
             "pillow")


def cpu_count() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's share), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15-minute load averages, or None where the system has none."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


def format_load(load: Sequence[float] | None) -> str:
    return "load average " + (", ".join(f"{v:.2f}" for v in load) if load else "?")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _accelerator(check_torch: bool) -> dict | None:
    """The CUDA / MPS device torch can use, or None. Imports torch only when it is installed."""
    if not check_torch or _version("torch") is None:
        return None
    try:
        import torch
    except Exception:  # a broken install must not break a report
        return None
    if torch.cuda.is_available():
        i = torch.cuda.current_device()
        p = torch.cuda.get_device_properties(i)
        return {"kind": "cuda", "name": p.name, "count": torch.cuda.device_count(),
                "memory_gib": round(p.total_memory / 2**30, 1)}
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return {"kind": "mps", "name": "Apple GPU", "count": 1}
    return None


def machine_info(check_accelerator: bool = True) -> dict:
    """Describe this machine for a report: {"cores", "cores_usable", "memory_gib", "cpu", "os", "machine",
    "accelerator" (None = CPU only), "python", "versions": {distribution: version or None},
    "load_average": [1, 5, 15 minutes] now (None where the system has none)}.

    Versions are read from the installed distributions (no import); the accelerator check imports torch
    when it is installed (pass check_accelerator=False to skip that).
    """
    mem = _memory_bytes()
    load = load_average()
    return {
        "cores": os.cpu_count(),
        "cores_usable": cpu_count(),
        "memory_gib": round(mem / 2**30, 1) if mem else None,
        "cpu": _cpu_model(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "accelerator": _accelerator(check_accelerator),
        "python": sys.version.split()[0],
        "versions": {d: _version(d) for d in VERSIONED},
        "load_average": [round(v, 2) for v in load] if load else None,
    }


def format_machine(info: dict, libraries: Sequence[str] = ("torch", "faiss-cpu", "faiss-gpu")) -> str:
    """One line for a report, e.g. "2 cores, 7.8 GiB, Intel Xeon ..., no accelerator; Python 3.12.3, torch 2.4.0;
    load average 0.52, 0.40, 0.31"; `libraries` chooses the versions named (those installed)."""
    acc = info.get("accelerator")
    acc_s = f"{acc['name']} ({acc['kind']})" if acc else "no accelerator"
    v = info.get("versions") or {}
    libs = ", ".join(f"{k} {v[k]}" for k in libraries if v.get(k))
    line = (f"{info.get('cores_usable') or info.get('cores')} cores, {info.get('memory_gib')} GiB, {info.get('cpu')}, "
            f"{acc_s}; Python {info.get('python')}" + (f", {libs}" if libs else ""))
    return line + (f"; {format_load(info['load_average'])}" if info.get("load_average") else "")
