"""Where a bench runs its baseline side: the GPU when there is one, else the CPU."""

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def device_name() -> str:
    return torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
