"""The compiled statistics kernel when it was built, else None (numpy does the work)."""

from __future__ import annotations

import os
from types import ModuleType

DISABLE_VARIABLE = "WEISSI_NO_KERNEL"  # =1: use the numpy kernel (tests compare the two)

# Codes the C kernel takes for the storage dtypes it reads directly.
DTYPE_CODES = {"float32": 0, "bfloat16": 1}
NO_AXES, ROWS, COLUMNS, MATRIX = 0, 1, 2, 3


def _load() -> ModuleType | None:
    if os.environ.get(DISABLE_VARIABLE) == "1":
        return None
    try:
        from weissi_cli import _kernel  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _kernel  # type: ignore[no-any-return]


compiled: ModuleType | None = _load()
AVAILABLE = compiled is not None
