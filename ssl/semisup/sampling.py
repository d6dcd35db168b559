"""Seeded, resumable streams of randomness: index sampling without replacement per epoch."""
from __future__ import annotations

import torch
from torch import Tensor


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


class EpochSampler:
    """Indices without replacement within an epoch, reshuffled each epoch; resumable."""

    def __init__(self, size: int, generator: torch.Generator):
        self.size, self.generator = size, generator
        self.order = torch.randperm(size, generator=generator, device=generator.device)
        self.position = 0

    def next(self, count: int) -> Tensor:
        parts = []
        while count > 0:
            if self.position == self.size:
                self.order = torch.randperm(self.size, generator=self.generator,
                                            device=self.generator.device)
                self.position = 0
            take = min(count, self.size - self.position)
            parts.append(self.order[self.position:self.position + take])
            self.position += take
            count -= take
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def state_dict(self) -> dict:
        return {"order": self.order, "position": self.position,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.order = state["order"].to(self.order.device)
        self.position = state["position"]
        self.generator.set_state(state["generator"])
