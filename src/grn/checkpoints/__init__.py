"""Checkpoints, in one place and in pure torch (no Lightning import):

* :mod:`~grn.checkpoints.build`: reading a file as data (:func:`read_checkpoint`: tensors and plain containers
  only) and building only grn's own registered classes from its configs (:func:`build_from_config`);
  docs/checkpoints.md;
* :mod:`~grn.checkpoints.layout`: the format (key prefixes, :data:`EXPORT_KEY`, EMA entries);
* :mod:`~grn.checkpoints.files`: which checkpoints are complete, the newest one, a sharded folder read whole;
* :mod:`~grn.checkpoints.load`: networks and tokenizers out of files (:func:`load_generator`, :func:`load_t2iv`,
  :func:`load_tokenizer`), memory-mapped;
* :mod:`~grn.checkpoints.official`: one adapter per model family for official release files (load directly,
  convert optionally);
* :mod:`~grn.checkpoints.export`: the EMA weights alone in one small file.
"""

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
from grn.checkpoints.export import export_ema, weights_only_ema
from grn.checkpoints.files import (
    checkpoint_file_problem,
    checkpoint_problem,
    is_checkpoint,
    load_consolidated,
    newest_checkpoint,
    require_checkpoint_file,
)
from grn.checkpoints.layout import EXPORT_KEY
from grn.checkpoints.load import load_generator, load_network, load_t2iv, load_tokenizer
from grn.checkpoints.official import official_adapter, official_adapters

__all__ = [
    "EXPORT_KEY", "UnreadableCheckpointError", "UnsafeCheckpointError", "build_from_config", "check_stored_configs",
    "checkpoint_file_problem", "checkpoint_problem", "export_ema", "is_checkpoint", "load_consolidated",
    "load_generator", "load_network", "load_t2iv", "load_tokenizer", "newest_checkpoint", "official_adapter",
    "official_adapters", "read_checkpoint", "register", "registered", "require_checkpoint_file", "validated",
    "weights_only_ema",
]
