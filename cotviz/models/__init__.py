"""Model zoo: the registry, the ResNet skeleton, the variants and checkpoint loading."""

from cotviz.models import zoo as _zoo  # noqa: F401  (registers the variants; the registry never imports them)
from cotviz.models.configs import PaperResult, PretrainedCfg
from cotviz.models.inference import prepare_for_inference
from cotviz.models.registry import create_model, list_models, model_entry, register_model, resolve_name
from cotviz.models.resnet import Bottleneck, CoTResNet, FeatureInfo, HybridRouting

__all__ = [
    "Bottleneck", "CoTResNet", "FeatureInfo", "HybridRouting", "PaperResult", "PretrainedCfg",
    "create_model", "list_models", "model_entry", "prepare_for_inference", "register_model", "resolve_name",
]
