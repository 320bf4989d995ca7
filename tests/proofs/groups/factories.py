"""Test factories: the hand-built networks of `tl_tensorsim.proofs.groups.handbuilt`, and noisy copies of models."""

import copy

import torch

from tl_tensorsim.proofs.groups.handbuilt import handbuilt, tetra_circuits

__all__ = ["handbuilt", "noisy", "tetra_circuits"]


def noisy(model, scale, seed=0):
    """A copy of `model` with Gaussian noise at `scale` × each parameter's largest magnitude added (seeded)."""
    m = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * p.abs().max() * torch.randn(p.shape, generator=gen))
    return m
