"""Facts about this machine that choosing a backend and a precision depends on: the
device a worker renders on, the CPU's instruction sets, the installed runtimes.

A leaf: it imports no other heygem_ray module, so every layer can ask it. PyTorch is
imported when a question needs it: the driver and the job tasks read ``DeviceInfo`` (in
every worker's ``WorkerInfo``) without loading it.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

# CPU flags (/proc/cpuinfo) of the instructions that make int8 and bf16 fast.
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def _torch() -> ModuleType:
    import torch  # imported only when asked: its load takes seconds and most of the memory

    return torch


@dataclass(frozen=True)
class DeviceInfo:
    device: str  # "cpu" or "cuda:0"
    gpu: str | None  # e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: str | None  # e.g. "9.0"

    @classmethod
    def detect(cls) -> DeviceInfo:
        torch = _torch()
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return cls("cuda:0", torch.cuda.get_device_name(0), f"{major}.{minor}")
        return cls("cpu", None, None)


def cuda_unusable() -> str:
    """Why PyTorch cannot use CUDA in this process (asked when ``torch.cuda.is_available()``
    is False): a CPU-only build, no driver, no device visible."""
    torch = _torch()
    if torch.version.cuda is None:
        return (
            f"this node's PyTorch {torch.__version__} is a CPU-only build (torch.version.cuda is None): "
            "install a CUDA build of torch on the GPU nodes"
        )
    try:
        torch.cuda.init()  # raises with the driver's own words
    except (RuntimeError, AssertionError) as exc:
        said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    else:
        said = "it sees no device"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (
        f"CUDA is not available to PyTorch {torch.__version__} (built for CUDA {torch.version.cuda}): {said} "
        f"(CUDA_VISIBLE_DEVICES={visible!r}); check the node's NVIDIA driver with nvidia-smi"
    )


def device_arch(device: str) -> str:
    """The engine store's arch for ``device``: ``cpu``, or the GPU's compute capability as
    ``sm_90``. Read through torch, which uses the device's primary context: no second CUDA
    context."""
    if not device.startswith("cuda"):
        return "cpu"
    torch = _torch()
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    return f"sm_{major}{minor}"


def cpu_flags() -> set[str]:
    """This CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bfloat16 fast (AVX-512 BF16 or AMX)."""
    return bool(cpu_flags() & set(BF16_FLAGS))


def int8_pays(device: str) -> tuple[bool, str]:
    """(int8 is fast on ``device``, the instructions or hardware that make it so, or why not)."""
    if device.startswith("cuda"):
        torch = _torch()
        major, minor = torch.cuda.get_device_capability(torch.device(device))
        if (major, minor) >= (7, 5):
            return True, f"INT8 tensor cores (compute capability {major}.{minor})"
        return False, f"compute capability {major}.{minor} has no INT8 tensor cores (7.5 or later)"
    have = sorted(cpu_flags() & set(INT8_FLAGS))
    if have:
        return True, ", ".join(have)
    return False, f"this CPU has none of {', '.join(INT8_FLAGS)}"


def tensorrt_version() -> str:
    """The installed TensorRT's full version, e.g. "10.9.0.34" (engines are tied to it);
    ImportError where it is not installed."""
    import tensorrt  # optional: imported only when asked

    return str(tensorrt.__version__)


def runtime_version(backend: str) -> str:
    """The version of the runtime that runs ``backend``'s artifacts."""
    if backend == "tensorrt":
        return f"tensorrt{tensorrt_version()}"
    if backend == "onnxruntime":
        import onnxruntime  # imported only when asked: its load takes a moment

        return f"onnxruntime{onnxruntime.__version__}"
    return f"torch{_torch().__version__}"
