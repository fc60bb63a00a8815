"""mmseg-naslora: parameter-efficient fine-tuning of SAM for mmsegmentation."""
from . import datasets, engine, evaluation, models  # noqa: F401

__version__ = '0.1.0'
