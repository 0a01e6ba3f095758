"""The machine a figure was measured on (PROTOCOLS.md section 5): cores, memory, CPU, accelerator, versions."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata


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


def _usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


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
    "accelerator" (None = CPU only), "python", "versions": {package: version or None}}.

    Versions are read from the installed distributions (no import); the accelerator check imports torch
    when it is installed (pass check_accelerator=False to skip that).
    """
    mem = _memory_bytes()
    return {
        "cores": os.cpu_count(),
        "cores_usable": _usable_cores(),
        "memory_gib": round(mem / 2**30, 1) if mem else None,
        "cpu": _cpu_model(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "accelerator": _accelerator(check_accelerator),
        "python": sys.version.split()[0],
        "versions": {d: _version(d) for d in ("vestis", "numpy", "torch", "torchvision", "timm", "faiss-cpu",
                                              "faiss-gpu", "pymilvus", "onnxruntime")},
    }


def format_machine(info: dict) -> str:
    """One line for a report header, e.g. "2 cores, 7.8 GiB, Intel Xeon ..., no accelerator"."""
    acc = info.get("accelerator")
    acc_s = f"{acc['name']} ({acc['kind']})" if acc else "no accelerator"
    v = info.get("versions") or {}
    libs = ", ".join(f"{k} {x}" for k, x in v.items() if x and k in ("torch", "faiss-cpu", "faiss-gpu"))
    return (f"{info.get('cores_usable') or info.get('cores')} cores, {info.get('memory_gib')} GiB, {info.get('cpu')}, "
            f"{acc_s}; Python {info.get('python')}" + (f", {libs}" if libs else ""))
