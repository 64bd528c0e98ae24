"""Config values stored in checkpoints: the Lightning side (checked loads). The value conversion itself is
:mod:`grn.checkpoints.values`, which datamodules and entry points use without Lightning."""

from __future__ import annotations

from grn.checkpoints import check_stored_configs
from grn.checkpoints.values import plain_config, plain_hparams

__all__ = ["CheckedLoad", "plain_config", "plain_hparams"]


class CheckedLoad:
    """Mixin for LightningModules: ``load_from_checkpoint`` first refuses a file whose stored configs grn would not
    build from a checkpoint (:func:`grn.checkpoints.check_stored_configs`), since Lightning passes them to
    ``__init__``, which instantiates them with Hydra. ``stored_configs``: hyper-parameter name -> allowed kinds."""

    stored_configs: dict[str, set[str]] = {}

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        check_stored_configs(checkpoint_path, cls.stored_configs, given=kwargs)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
