"""heygem-ray: batch lip-synced talking-head videos on a Ray cluster.

The public surface is small::

    from heygem_ray import RenderConfig, RunConfig, submit
    summary = submit(Path("manifest.csv"), RunConfig(output_dir=Path("out")))

plus ``heygem_ray.models.wav2lip.load`` and ``heygem_ray.features.wav2lip_mel`` for
parity checks against the public Wav2Lip code. Everything else is internal.
"""

from typing import TYPE_CHECKING

from heygem_ray.config import DetectorConfig, InputLimits, RenderConfig, RunConfig
from heygem_ray.errors import EngineError, HeygemError, InputError, InternalError
from heygem_ray.version import __version__ as __version__

if TYPE_CHECKING:
    from heygem_ray.driver import RunSummary, submit

__all__ = [
    "DetectorConfig",
    "EngineError",
    "HeygemError",
    "InputError",
    "InputLimits",
    "InternalError",
    "RenderConfig",
    "RunConfig",
    "RunSummary",
    "submit",
]


def __getattr__(name: str) -> object:
    # ``submit`` pulls in Ray; importing heygem_ray.models or .features must not.
    if name in ("submit", "RunSummary"):
        from heygem_ray import driver

        return getattr(driver, name)
    raise AttributeError(f"module 'heygem_ray' has no attribute {name!r}")
