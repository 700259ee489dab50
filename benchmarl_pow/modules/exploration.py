"""ε-greedy exploration whose ε is an exact function of the frames seen (PyMARL's schedule)."""

from __future__ import annotations

import torch
from torchrl.modules import EGreedyModule


class LinearEGreedyModule(EGreedyModule):
    """TorchRL's :class:`~torchrl.modules.EGreedyModule` with an exact linear schedule.

    ``ε(t) = max(ε_end, ε_init − (ε_init − ε_end)·t / annealing_num_steps)`` for ``t`` frames
    stepped so far (pow_spec.md §1.2: ε(100k) = 0.81, ε(250k) = 0.525 for 1 → 0.05 over 500k).
    The parent subtracts a float32 increment once per frame, which drifts (ε(100k) = 0.8093)
    and costs one tensor op per frame; here the frame count is an integer buffer (saved with
    the module's state) and ε is recomputed from it. Masks, spec and forward are the parent's.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("frames", torch.zeros((), dtype=torch.long, device=self.eps.device))

    def step(self, frames: int = 1) -> None:
        self.frames += int(frames)
        init, end = float(self.eps_init), float(self.eps_end)
        value = init - (init - end) * int(self.frames) / self.annealing_num_steps
        self.eps.data.fill_(max(end, value) if init >= end else min(end, value))
