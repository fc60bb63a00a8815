"""Dataset converters: official releases to mmseg's ``img_dir``/``ann_dir`` layout.

Run one from the repo root as a script (``python tools/dataset_converters/kvasir.py``)
or as a module (``python -m tools.dataset_converters.kvasir``); both import the
shared helpers as :mod:`tools.dataset_converters._common`.
"""
