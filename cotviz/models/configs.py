"""Per-variant metadata: preprocessing of the pretrained weights and the published results.

Values are those declared by the official model files (``default_cfg``) and the official README
results table (JDAI-CV/CoTNet, snapshot 895e024), as recorded in ``../shared/reference/``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PaperResult", "PretrainedCfg"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PretrainedCfg(Mapping[str, Any]):
    """How the official weights expect their input (timm ``default_cfg`` fields).

    Also a read-only mapping of its field names, as timm reads a model's cfg (``cfg.get("crop_pct")``,
    ``cfg["input_size"]``): ``timm.data.resolve_data_config(model=m)`` and ``resolve_model_data_config(m)`` take
    a cotviz model as it is. :meth:`to_dict` gives a plain ``dict`` copy.
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    pool_size: tuple[int, int] = (7, 7)
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_classes: int = 1000
    first_conv: str = "conv1"
    classifier: str = "fc"

    @property
    def image_size(self) -> int:
        """Square input side in pixels."""
        return self.input_size[-1]

    def to_dict(self) -> dict[str, Any]:
        """A plain ``dict`` of every field (timm's ``pretrained_cfg`` / ``default_cfg`` form)."""
        return asdict(self)

    def __getitem__(self, key: str) -> Any:
        if not isinstance(key, str) or key not in _FIELD_NAMES:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_FIELD_NAMES)

    def __len__(self) -> int:
        return len(_FIELD_NAMES)


_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(PretrainedCfg))


@dataclass(frozen=True)
class PaperResult:
    """A row of the official README table: ImageNet-1k val accuracy of the released checkpoint."""

    name: str
    resolution: int
    params: str
    gflops: str  # the README's "FLOPs" column; it is GMACs from the authors' counter
    top1: float
    top5: float
    googledrive: str
    baidu: str
    baidu_access_code: str = "cotn"
