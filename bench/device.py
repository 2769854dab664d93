"""Where a bench runs its baseline side: the GPU when there is one, else the CPU."""

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GPUS = torch.cuda.device_count()
"""For `ray.init(num_gpus=GPUS)`: the GPUs given, not detected (a detection that finds none leaves
GPU actors pending with nothing said)."""


def device_name() -> str:
    return torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
