"""The one place that knows how architecture parameters (α) are found.

Every architecture parameter is named ``<owner>.nas_alpha``; the owner is the
adapter whose candidate ops it mixes (its ``primitives``). The optim-wrapper
constructor, the segmentor's training step, the NAS hooks, the adapter file
writer and the benchmarks all go through these functions.
"""
from dataclasses import dataclass
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

#: Every architecture parameter's name ends in this (dotted) name part.
ALPHA_MARKER = 'nas_alpha'


def is_arch_name(name: str) -> bool:
    """Whether the parameter (or state-dict key) ``name`` is an α."""
    return name == ALPHA_MARKER or name.endswith('.' + ALPHA_MARKER)


def arch_parameters(model: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    """``(name, α)`` of every architecture parameter of ``model``, shared ones once."""
    return [(n, p) for n, p in model.named_parameters() if is_arch_name(n)]


@dataclass
class ArchLayer:
    """One architecture parameter seen as a layer of the searched network.

    Attributes:
        name (str): The owner's module name (``backbone.encoder.blocks.3.attn.qkv``).
        owner (nn.Module): The adapter that holds α.
        primitives (list[str]): Its candidate op names, in α's order.
        alpha (nn.Parameter): α itself.
    """

    name: str
    owner: nn.Module
    primitives: List[str]
    alpha: nn.Parameter

    @property
    def weights(self) -> torch.Tensor:
        """``softmax(α)`` as a detached float CPU vector."""
        return F.softmax(self.alpha.detach().float(), dim=-1).cpu().flatten()


def arch_layers(model: nn.Module) -> List[ArchLayer]:
    """Every architecture parameter of ``model`` with its owner and op names."""
    layers = []
    for name, param in arch_parameters(model):
        owner_name = name[:-len(ALPHA_MARKER)].rstrip('.')
        owner = model.get_submodule(owner_name) if owner_name else model
        ops = list(getattr(owner, 'primitives', [f'op{i}' for i in range(param.numel())]))
        layers.append(ArchLayer(owner_name, owner, ops, param))
    return layers
