from . import checkpoint_loader  # noqa: F401
