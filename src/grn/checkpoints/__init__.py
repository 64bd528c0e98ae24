"""Reading checkpoints as data: :func:`read_checkpoint` (tensors and plain containers only) and
:func:`build_from_config` (only grn's own registered classes, with plain arguments). See docs/checkpoints.md."""

from grn.checkpoints.build import (
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    build_from_config,
    check_stored_configs,
    read_checkpoint,
    register,
    registered,
    validated,
)

__all__ = [
    "UnreadableCheckpointError", "UnsafeCheckpointError", "build_from_config", "check_stored_configs", "read_checkpoint", "register", "registered",
    "validated",
]
