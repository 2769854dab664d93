"""Fixtures of the unit tests."""

import pytest
import ray
import torch


class Assigned:
    """Ray's runtime context as an actor given `gpus` of a GPU sees it."""

    def __init__(self, gpus: float):
        self.gpus = gpus

    def get_assigned_resources(self):
        return {"CPU": 1.0, **({"GPU": self.gpus} if self.gpus else {})}


@pytest.fixture
def on_gpu(monkeypatch):
    """on_gpu(share): a visible GPU (no GPU on CI) of which Ray assigned this process `share`: what
    the code deciding from the assignment is tested on, not the GPU itself."""
    def assign(gpus: float) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(ray, "is_initialized", lambda: True)
        monkeypatch.setattr(ray, "get_runtime_context", lambda: Assigned(gpus))
    return assign
