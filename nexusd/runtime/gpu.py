"""Apply NEXUS_GPU_MEMORY in-process: cgroups cannot limit GPU memory, so the cap is torch's
per-process memory fraction. A no-op without torch or CUDA."""

from __future__ import annotations

import logging
import sys

from nexusd.runtime.cgroup import parse_bytes

log = logging.getLogger("nexusd.gpu")


def apply_gpu_memory_limit(limit: str | None, device: int = 0) -> float | None:
    """Returns the fraction applied, or None when nothing was applied.

    Only a process that already imported torch gets the cap: importing torch here would cost a
    service without a torch backend (the images stub, tts espeak) seconds and hundreds of MB.
    Backends that load torch call this themselves right after (images' diffusers backend)."""
    if not limit or "torch" not in sys.modules:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = min(1.0, parse_bytes(limit) / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    log.info("GPU memory capped at %s (%.3f of %d bytes)", limit, fraction, total)
    return fraction
