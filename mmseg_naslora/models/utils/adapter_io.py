"""Adapter-only checkpoints: the trained tensors of a model in one safetensors file.

A fine-tuned model is the public base SAM checkpoint plus a few MB of
trained tensors (adapters, NAS α, the trained parts of the head). This module
writes those tensors with the `safetensors <https://github.com/huggingface/safetensors>`_
format (no pickle, so loading runs no code), with a metadata header that
names the backbone, its arch and adapter config, and the sha256 of the base
checkpoint file(s), and loads them back onto a model built from a config,
refusing a base that does not match.

The header also records ``tensors_sha256``, a hash of every tensor's name,
dtype, shape and bytes, so a file whose values were corrupted on disk or in
transfer is refused instead of loading silently (files written before the
checksum existed still load, with a warning that they cannot be verified).
Adapter configs are compared by meaning (build-time defaults filled in,
numbers compared as numbers, the old key ``alpha`` read as ``lora_alpha``), so
``lora_alpha=32`` and ``alpha=32.0`` agree.
"""
import hashlib
import inspect
import json
import logging
import os.path as osp
from typing import Any, Dict, List, Mapping, Optional

import torch
import torch.nn as nn
from mmengine.logging import print_log

from ...engine.atomic_io import atomic_write_bytes, sha256_file  # noqa: F401  (re-exported)
from ..adapters.arch import is_arch_name
from ..adapters.inject import iter_adapters
from ..adapters.lora import rename_deprecated_alpha

FORMAT = 'mmseg_naslora.adapters'
FORMAT_VERSION = '1'
#: Metadata key of the tensor-content checksum (absent in files before it existed).
CHECKSUM_KEY = 'tensors_sha256'
# Metadata fields compared with the config at load time.
CHECKED_FIELDS = ('backbone', 'arch', 'adapter')


def base_checkpoints(model_cfg: Mapping) -> List[str]:
    """Every ``checkpoint`` path named in a model config (backbone, head, init_cfg...)."""
    found: List[str] = []

    def visit(node) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                if key == 'checkpoint' and isinstance(value, str) and value not in found:
                    found.append(value)
                else:
                    visit(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                visit(value)

    visit(model_cfg)
    return found


def _to_jsonable(value):
    if hasattr(value, 'to_dict'):
        value = value.to_dict()
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def describe_model(model_cfg: Mapping) -> Dict[str, str]:
    """The metadata fields of ``model_cfg`` that an adapter file must agree with."""
    if 'backbone' not in model_cfg and 'module' in model_cfg:  # a TTA model (ProbTTAModel)
        model_cfg = model_cfg['module']
    backbone = dict(model_cfg.get('backbone') or {})
    return dict(
        backbone=json.dumps(backbone.get('type')),
        arch=json.dumps(_to_jsonable(backbone.get('arch')), sort_keys=True),
        adapter=json.dumps(_to_jsonable(backbone.get('adapter')), sort_keys=True))


def _adapter_defaults(adapter_type: Any) -> Dict[str, Any]:
    """Keyword defaults of the adapter class's ``__init__`` (subclasses override bases)."""
    from mmseg.registry import MODELS
    cls = MODELS.get(adapter_type) if isinstance(adapter_type, str) else None
    defaults: Dict[str, Any] = {}
    if cls is None:
        return defaults
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get('__init__')
        if init is None:
            continue
        for name, param in inspect.signature(init).parameters.items():
            if name in ('self', 'base_layer') or param.default is inspect.Parameter.empty \
                    or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            defaults[name] = param.default
    return defaults


def _canonical(value: Any) -> Any:
    """Numbers as floats (``32 == 32.0``), tuples as lists, dicts sorted; bools kept."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def canonical_description(description: Mapping[str, str]) -> Dict[str, Any]:
    """The meaning of a :func:`describe_model` record, for comparison.

    The adapter config gets the build-time defaults of its class filled in
    (an explicit ``dropout=0.0`` equals leaving it out), and every number is
    compared as a number. Unparsable fields are kept as text.
    """
    out: Dict[str, Any] = {}
    for field in CHECKED_FIELDS:
        text = description.get(field)
        try:
            value = json.loads(text) if isinstance(text, str) else text
        except ValueError:
            out[field] = text
            continue
        if field == 'adapter' and isinstance(value, Mapping):
            # Files written before the rename record ``alpha`` for ``lora_alpha``.
            value = rename_deprecated_alpha(value, 'adapter config')
            value = dict(_adapter_defaults(value.get('type')), **value)
        out[field] = _canonical(value)
    return out


def description_diff(recorded: Mapping[str, str], own: Mapping[str, str]) -> List[str]:
    """The :data:`CHECKED_FIELDS` whose meaning differs between two descriptions."""
    theirs, ours = canonical_description(recorded), canonical_description(own)
    return [field for field in CHECKED_FIELDS if theirs.get(field) != ours.get(field)]


def tensors_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and raw bytes, in key order."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().cpu().contiguous()
        digest.update(f'{key}|{tensor.dtype}|{tuple(tensor.shape)}|'.encode())
        # A uint8 view gives the raw bytes of any dtype (bf16 has no numpy dtype).
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def trainable_state_keys(model: nn.Module) -> List[str]:
    """State-dict keys of what training changes.

    Every parameter with ``requires_grad``, plus every parameter and buffer of
    the adapter modules except their frozen ``base_layer`` (α may be frozen
    for a stage, and DARTS ops keep BN running statistics in buffers).
    """
    keys = [n for n, p in model.named_parameters() if p.requires_grad]
    for name, adapter in iter_adapters(model):
        prefix = f'{name}.' if name else ''
        for sub, _ in list(adapter.named_parameters()) + list(adapter.named_buffers()):
            if not sub.startswith('base_layer.'):
                keys.append(prefix + sub)
    keys += [n for n, _ in model.named_parameters() if is_arch_name(n)]
    state = model.state_dict()
    return sorted(k for k in set(keys) if k in state)


def adapter_state_dict(model: nn.Module,
                       state: Optional[Mapping[str, torch.Tensor]] = None
                       ) -> Dict[str, torch.Tensor]:
    """The trainable tensors of ``model`` (taken from ``state`` when given), on the CPU."""
    state = model.state_dict() if state is None else state
    return {k: state[k].detach().cpu().contiguous().clone()
            for k in trainable_state_keys(model)}


def build_metadata(model_cfg: Mapping, source: str = '',
                   tensors: Optional[Mapping[str, torch.Tensor]] = None) -> Dict[str, str]:
    """The safetensors header: format, model description, base-file and tensor hashes."""
    from mmseg_naslora import __version__
    bases = {path: sha256_file(path) for path in base_checkpoints(model_cfg)
             if osp.isfile(path)}
    metadata = dict(format=FORMAT, format_version=FORMAT_VERSION,
                    **describe_model(model_cfg),
                    segmentor=json.dumps(model_cfg.get('type')),
                    base_sha256=json.dumps(bases, sort_keys=True),
                    source=source, mmseg_naslora_version=__version__)
    if tensors is not None:
        metadata[CHECKSUM_KEY] = tensors_checksum(tensors)
    return metadata


def save_adapters(path: str, tensors: Mapping[str, torch.Tensor], model_cfg: Mapping,
                  source: str = '') -> str:
    """Write ``tensors`` and the metadata of ``model_cfg`` to ``path`` atomically.

    Args:
        path (str): Output ``.safetensors`` file.
        tensors (Mapping[str, Tensor]): From :func:`adapter_state_dict`.
        model_cfg (Mapping): The model config (for the header).
        source (str): What the tensors came from (e.g. the checkpoint name).

    Returns:
        str: ``path``.
    """
    from safetensors.torch import save
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    data = save(tensors, metadata=build_metadata(model_cfg, source, tensors))
    atomic_write_bytes(path, data)
    return path


def _unreadable(path: str, err: Exception) -> ValueError:
    size = osp.getsize(path)
    why = 'it is empty' if size == 0 else \
        f'its header or data is damaged or the file is truncated ({size} bytes)'
    return ValueError(
        f'adapter file {path!r} is not a readable safetensors file: {why} '
        f'({type(err).__name__}: {err}). Copy it again from its source or re-export it '
        'with tools/export.py --mode adapters.')


def read_safetensors_metadata(path: str) -> Dict[str, str]:
    """The metadata header of a safetensors file, with an error naming a damaged file."""
    from safetensors import safe_open
    if not osp.isfile(path):
        raise FileNotFoundError(f'adapter file {path!r} does not exist.')
    try:
        with safe_open(path, framework='pt') as f:
            return f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types
        raise _unreadable(path, err) from err


def read_adapters(path: str):
    """``(tensors, metadata)`` of an adapter file, refusing any other file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: naming ``path``: an empty, truncated or damaged file, a
            safetensors file of another format, or tensor values that do not
            match the checksum recorded when the file was written.
    """
    from safetensors import safe_open
    metadata = read_safetensors_metadata(path)
    if metadata.get('format') != FORMAT:
        raise ValueError(
            f'{path!r} is a safetensors file but not an mmseg_naslora adapter file '
            f'(metadata format={metadata.get("format")!r}); write one with '
            'tools/export.py --mode adapters or the AdapterCheckpointHook.')
    try:
        with safe_open(path, framework='pt') as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise _unreadable(path, err) from err
    recorded = metadata.get(CHECKSUM_KEY)
    if recorded is None:
        print_log(f'adapter file {path!r} has no {CHECKSUM_KEY} (written before the '
                  'checksum existed): its tensor values cannot be verified. Re-export it '
                  'with tools/export.py --mode adapters to add one.',
                  logger='current', level=logging.WARNING)
    elif tensors_checksum(tensors) != recorded:
        raise ValueError(
            f'adapter file {path!r} is corrupted: its tensor values do not match the '
            f'{CHECKSUM_KEY} recorded when it was written. Copy it again from its source '
            'or re-export it with tools/export.py --mode adapters.')
    return tensors, metadata


def check_metadata(metadata: Mapping[str, str], model_cfg: Mapping, path: str,
                   strict: bool = True) -> None:
    """Refuse (``strict``) or warn about a base model that differs from the file's.

    Compares the backbone type, arch and adapter config, and the sha256 of the
    config's base checkpoint files with those recorded in the file.
    """
    problems = []
    own = describe_model(model_cfg)
    for field in description_diff(metadata, own):
        problems.append(f'model.backbone.{field if field != "backbone" else "type"}: '
                        f'file has {metadata.get(field)}, config has {own[field]}')
    recorded = json.loads(metadata.get('base_sha256') or '{}')
    if recorded:
        paths = base_checkpoints(model_cfg)
        missing = [p for p in paths if not osp.isfile(p)]
        if missing:
            problems.append(f'base checkpoint(s) {missing} of the config do not exist, so '
                            'they cannot be compared with the base the adapters were '
                            'trained on')
        ours = {sha256_file(p) for p in paths if osp.isfile(p)}
        theirs = set(recorded.values())
        if not missing and ours != theirs:
            problems.append(f'base checkpoint sha256 differs: file was trained on '
                            f'{recorded}, config loads '
                            f'{ {p: sha256_file(p) for p in paths if osp.isfile(p)} }')
    if not problems:
        return
    msg = (f'adapter file {path!r} does not match the base model of the config:\n  '
           + '\n  '.join(problems)
           + '\nfix: use the config (and base SAM checkpoint) the adapters were trained '
           'with, or pass strict=False to load anyway.')
    if strict:
        raise ValueError(msg)
    print_log(msg.replace('\nfix:', '\n(strict=False: loading anyway)'),
              logger='current', level=logging.WARNING)


def load_adapters(model: nn.Module, path: str, model_cfg: Mapping,
                  strict: bool = True) -> Dict[str, str]:
    """Load an adapter file onto ``model``, whose base weights are already loaded.

    Args:
        model (nn.Module): Built from ``model_cfg``, base SAM weights loaded.
        path (str): The ``.safetensors`` adapter file.
        model_cfg (Mapping): The config ``model`` was built from.
        strict (bool): Refuse a base that differs (arch, adapter, base sha256)
            and a file that lacks some trainable tensor of the model; with
            False these are warnings. Unknown keys and shape mismatches are
            always refused. Defaults to True.

    Returns:
        dict: The file's metadata.
    """
    tensors, metadata = read_adapters(path)
    check_metadata(metadata, model_cfg, path, strict)
    state = model.state_dict()
    unexpected = sorted(k for k in tensors if k not in state)
    shapes = [f'{k}: file {tuple(v.shape)}, model {tuple(state[k].shape)}'
              for k, v in tensors.items() if k in state and state[k].shape != v.shape]
    if unexpected or shapes:
        raise ValueError(
            f'adapter file {path!r} does not fit {type(model).__name__}: '
            + (f'keys not in the model ({len(unexpected)}): {unexpected[:5]}; '
               if unexpected else '')
            + (f'shape mismatches: {shapes[:5]}; ' if shapes else '')
            + 'build the model from the config the adapters were trained with.')
    missing = sorted(set(trainable_state_keys(model)) - set(tensors))
    if missing:
        msg = (f'adapter file {path!r} lacks {len(missing)} trainable tensor(s) of the '
               f'model: {missing[:5]}')
        if strict:
            raise ValueError(msg + '; was it written for another head or adapter config?')
        print_log(msg + ' (strict=False: they keep their initial values)',
                  logger='current', level=logging.WARNING)
    with torch.no_grad():
        for key, value in tensors.items():
            state[key].copy_(value)
    return metadata



def load_adapter_file(model: nn.Module, path: str, model_cfg: Mapping,
                      strict: bool = True) -> Dict[str, str]:
    """The one load path of an adapter file: base weights, then checks, then tensors.

    Used by ``tools/test.py``, by ``load_from`` in any mmengine runner (the
    checkpoint loader calls it, see
    :func:`mmseg_naslora.engine.checkpoint_loader.load_from_local`) and by
    the :class:`AdapterCheckpointHook`. An adapter file holds only what
    training changed, so the frozen weights must come from the base SAM
    checkpoint(s) of the config: a model whose ``init_weights`` has not run
    (test/val never call it) is initialised first.

    Args:
        model (nn.Module): The segmentor built from ``model_cfg``.
        path (str): The adapter file.
        model_cfg (Mapping): Its config (a TTA model config's ``module``
            is used).
        strict (bool): See :func:`load_adapters`. Defaults to True.

    Returns:
        dict: The file's metadata.
    """
    if 'backbone' not in model_cfg and 'module' in model_cfg:  # a TTA model (ProbTTAModel)
        model_cfg = model_cfg['module']
    if not getattr(model, 'is_init', False):
        model.init_weights()
    return load_adapters(model, path, model_cfg, strict=strict)
