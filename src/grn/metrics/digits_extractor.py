"""The digits classifier as a torch-fidelity feature extractor (``grn-digits``): the offline stand-in for Inception.

Importing this module registers it, after which upstream torch-fidelity computes digits-FID / digits-IS with it like
with any built-in extractor::

    import grn.metrics.digits_extractor  # noqa: F401  (registers "grn-digits")
    torch_fidelity.calculate_metrics(input1=..., input2=..., fid=True, feature_extractor="grn-digits",
                                     feature_extractor_weights_path=".cache/grn/digits_classifier.pt", cuda=False)

Features: ``"128"`` (the classifier's penultimate layer, for FID/KID) and ``"logits"`` (10 classes, for IS and for
conditional accuracy). The weights file is the classifier cache written by
:func:`grn.metrics.digits.load_or_train_classifier`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.helpers import vassert
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from grn.metrics.digits import DigitsClassifier
from grn.metrics.names import DIGITS_EXTRACTOR_NAME

__all__ = ["DIGITS_EXTRACTOR_NAME", "DigitsFeatureExtractor"]


class DigitsFeatureExtractor(FeatureExtractorBase):
    """``uint8 [B, 3, H, W]`` → ``("128": float32 [B, 128], "logits": float32 [B, 10])`` in the requested order.

    Args:
        feature_extractor_weights_path: a digits classifier cache (``{"state_dict", ...}``, read weights-only).
    """

    def __init__(self, name: str, features_list, feature_extractor_weights_path: str | None = None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None or not Path(feature_extractor_weights_path).is_file():
            raise FileNotFoundError(
                f"{name} needs feature_extractor_weights_path = a digits classifier cache (got "
                f"{feature_extractor_weights_path}); make one with grn.metrics.digits.load_or_train_classifier(path)"
            )
        blob = torch.load(feature_extractor_weights_path, map_location="cpu", weights_only=True)
        self.classifier = DigitsClassifier()
        self.classifier.load_state_dict(blob["state_dict"])
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        vassert(
            torch.is_tensor(x) and x.dtype == torch.uint8,
            "Expecting image as torch.Tensor with dtype=torch.uint8",
        )
        vassert(x.dim() == 4 and x.shape[1] == 3, f"Input is not Bx3xHxW: {x.shape}")
        feats = self.classifier.features(x.float() / 127.5 - 1.0)
        out = {
            "128": feats,
            "logits": self.classifier.head(feats),
        }  # dropout sits before the head only in training
        return tuple(out[name].float() for name in self.features_list)

    @staticmethod
    def get_provided_features_list():
        return "128", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"fid": "128", "kid": "128", "prc": "128", "isc": "logits"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)


if DIGITS_EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:  # re-imports (importlib test mode) must not fail
    register_feature_extractor(DIGITS_EXTRACTOR_NAME, DigitsFeatureExtractor)
