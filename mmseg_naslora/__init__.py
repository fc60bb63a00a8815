"""mmseg-naslora: parameter-efficient fine-tuning of SAM for mmsegmentation."""
# models first: the checkpoint package reads the adapters, and the models use it.
from . import models  # noqa: F401,I001
from . import checkpoint, datasets, engine, evaluation  # noqa: F401

__version__ = '0.1.0'
