from . import checkpoint_loader  # noqa: F401
from .hooks import *  # noqa: F401,F403
from .optimizers import *  # noqa: F401,F403
