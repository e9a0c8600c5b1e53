"""The trainer's choices, without importing Keras: what the command's flags offer (and ``--help`` shows fast)."""
from __future__ import annotations

import importlib.util

LOSSES = ("mse", "cosine")
SCHEDULES = ("constant", "cosine", "plateau")
STRATEGIES = ("default", "mirrored", "multiworker")
HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
