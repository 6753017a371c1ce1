"""Which device a plugin's model runs on.

Workers are scheduled onto GPU or CPU nodes by the pipeline's resource type, and a GPU step falls
back to CPU on a cluster without GPUs, so plugin code must never assume a GPU exists: it asks here.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def select_device(prefer: str | None = None) -> str:
    """The torch device string to use: `prefer` when that device exists here, else "cuda" when a
    GPU is visible, else "cpu". Never raises: an unusable or unknown `prefer` is logged and ignored,
    so the same plugin code runs on a GPU worker and on a CPU-only laptop."""
    try:
        import torch
    except ImportError:  # the SDK without torch still answers
        return "cpu"

    if prefer:
        wanted = prefer.strip().lower()
        if _usable(torch, wanted):
            return wanted
        logger.warning("device %r is not available in this process; choosing one automatically", prefer)
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def _usable(torch, device: str) -> bool:
    kind, _, index = device.partition(":")
    if kind == "cpu":
        return index == ""
    if kind == "cuda":
        if not torch.cuda.is_available():
            return False
        if index == "":
            return True
        return index.isdigit() and int(index) < torch.cuda.device_count()
    if kind == "mps":
        backend = getattr(torch.backends, "mps", None)
        return index == "" and backend is not None and backend.is_available()
    return False
