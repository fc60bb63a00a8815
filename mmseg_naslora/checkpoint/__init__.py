"""Weights on disk: every file the package reads or writes, in one package.

- :mod:`.atomic_io`: the one atomic write and the one file hash;
- :mod:`.safe_load`: ``.pth`` checkpoints without pickle code;
- :mod:`.base_weights`: official SAM checkpoints into adapted modules;
- :mod:`.medsam`: the bundled LiteMedSAM file;
- :mod:`.adapter_file`: adapter-only safetensors files, written and loaded;
- :mod:`.mmengine_io`: what is registered with mmengine, and why.
"""
from . import mmengine_io  # noqa: F401  (the loader and the atomic backend)
