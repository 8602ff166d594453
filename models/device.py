"""Where local training runs: ``training.device`` and ``training.amp`` resolved.

Only local training moves to the device. The swarm exchanges flat float32 vectors built
on the CPU (`models.flatten.flatten` copies every tensor to the CPU), so what a site
encrypts and what the merge sums are the same bytes whichever hardware trained them.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

import torch

DeviceName = Literal["auto", "cpu", "cuda", "mps"]
DEVICES: Final[tuple[str, ...]] = get_args(DeviceName)


class DeviceError(ValueError):
    """The configured device is not available here, or AMP was asked for off CUDA."""


def resolve_device(name: str) -> torch.device:
    """ "auto": CUDA if torch sees a GPU, else Apple's MPS, else the CPU; a named device must
    be available (a site that asks for "cuda" on a CPU-only torch is refused, not moved)."""
    if name not in DEVICES:
        raise DeviceError(f"training.device must be one of {', '.join(DEVICES)}, got {name!r}")
    cuda = torch.cuda.is_available()
    mps = torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise DeviceError(
            f"training.device = {name!r}, but this torch ({torch.__version__}) sees no {name.upper()} "
            'device: use "auto" or "cpu", or install a torch build for it (README, GPUs)'
        )
    return torch.device(name)


def check_amp(amp: bool, device: torch.device) -> None:
    """Mixed precision runs only on CUDA (float16 autocast with a gradient scaler)."""
    if amp and device.type != "cuda":
        raise DeviceError(
            f"training.amp = true needs a CUDA device; training.device resolved to {device.type!r} "
            "(mixed precision would not speed up training there): set training.amp = false"
        )
