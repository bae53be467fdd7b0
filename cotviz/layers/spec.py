"""Operator specs: ``NAME[:opt=value,...][@stages]`` -> :class:`LayerSpec`.

One text names a spatial operator, its keyword options and (optionally) the stages of the ResNet
skeleton that get it; the command line, ``create_model(..., spatial_layer=...)`` and the compare table
all speak it::

    cot                 CoT in every stage (options at their defaults)
    cot:kernel=5        5x5 CoT (aggregation window and static-context conv; the paper's Table 6)
    cot:key_kernel=1    3x3 aggregation, 1x1 static-context conv (Table 6)
    sa:kernel=7         local self-attention over 7x7 windows (SASA's choice)
    cot@4               CoT in layer4 (res5) only; layer1-3 keep plain ``conv`` bottlenecks (Table 7)
    cot@3-4, cot@2,4    stage ranges and lists

Names and option names are those of :func:`cotviz.layers.list_spatial_layers` and the builders'
keyword options (:func:`cotviz.layers.spatial_layer_type`); option values are converted to the type
the builder declares. Every mistake is one :class:`~cotviz.errors.InvalidArgumentError` line that
names the valid choices. Stages are 1..4 = ``layer1..layer4`` (the paper's res2..res5); naming all
four is the same spec as naming none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from cotviz.errors import InvalidArgumentError
from cotviz.layers.factory import LayerOption, create_spatial_layer, spatial_layer_type

__all__ = ["PLAIN_LAYER", "STAGES", "LayerSpec", "as_layer_spec", "parse_layer_spec"]

#: The stages of the skeleton a spec can name (``layer1..layer4``).
STAGES: tuple[int, ...] = (1, 2, 3, 4)
#: The operator of the stages a spec does not name: ResNet's plain 3x3 conv + BN + ReLU.
PLAIN_LAYER = "conv"
_SYNTAX = "NAME[:opt=value,...][@stages], e.g. cot:kernel=5 or cot@3-4"
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass(frozen=True)
class LayerSpec:
    """A spatial operator, its keyword options and the stages that get it (``None``: every stage).

    Constructing one validates it against the registry (unknown name or option, wrong value type,
    stage outside 1..4 raise :class:`InvalidArgumentError`). ``options`` are kept in the builder's
    declaration order, so equal specs compare and print equal; ``str(spec)`` is the canonical text
    (``parse_layer_spec(str(spec)) == spec``).
    """

    name: str
    options: tuple[tuple[str, Any], ...] = ()
    stages: frozenset[int] | None = None

    def __post_init__(self) -> None:
        entry = spatial_layer_type(self.name)
        given = dict(self.options)
        if len(given) != len(self.options):
            raise InvalidArgumentError(f"spatial layer {self.name!r} got an option twice in {self.options}")
        entry.check_options(given)
        object.__setattr__(self, "options", tuple((k, given[k]) for k in entry.options if k in given))
        if self.stages is not None:
            stages = frozenset(self.stages)
            bad = sorted(s for s in stages if s not in STAGES)
            if bad or not stages:
                raise InvalidArgumentError(
                    f"stages {sorted(stages)} of {self.name!r} must be among {_stage_text(frozenset(STAGES))}")
            object.__setattr__(self, "stages", None if stages == frozenset(STAGES) else stages)

    @classmethod
    def of(cls, name: str, stages: frozenset[int] | None = None, **options: Any) -> LayerSpec:
        """``LayerSpec.of("cot", kernel=5)``: the Python spelling of ``"cot:kernel=5"``."""
        return cls(name, tuple(options.items()), stages)

    @property
    def kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments of :func:`cotviz.layers.create_spatial_layer`."""
        return dict(self.options)

    @property
    def supports_stride(self) -> bool:
        """Whether the operator downsamples itself (else the bottleneck pools around it)."""
        return spatial_layer_type(self.name).supports_stride

    def for_stage(self, stage: int) -> LayerSpec:
        """The stage-free spec of the operator in ``stage``: this one, or plain ``conv`` if the stage is not named."""
        if self.stages is None or stage in self.stages:
            return self if self.stages is None else LayerSpec(self.name, self.options)
        return LayerSpec(PLAIN_LAYER)

    def build(self, channels: int, *, stride: int = 1, cardinality: int = 1,
              act_layer: type[nn.Module] = nn.ReLU) -> nn.Module:
        """The operator for ``channels`` channels: (B, C, H, W) -> (B, C, H/stride, W/stride)."""
        return create_spatial_layer(self.name, channels, stride=stride, cardinality=cardinality,
                                    act_layer=act_layer, **self.kwargs)

    def __str__(self) -> str:
        text = self.name
        if self.options:
            text += ":" + ",".join(f"{k}={_value_text(v)}" for k, v in self.options)
        if self.stages is not None:
            text += "@" + _stage_text(self.stages)
        return text


def _value_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _stage_text(stages: frozenset[int]) -> str:
    """``{2, 3, 4}`` -> ``"2-4"``; ``{1, 3, 4}`` -> ``"1,3-4"``."""
    runs: list[list[int]] = []
    for s in sorted(stages):
        if runs and s == runs[-1][-1] + 1:
            runs[-1].append(s)
        else:
            runs.append([s])
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def _parse_value(opt: LayerOption, layer: str, text: str, spec: str) -> Any:
    """Convert the text of one option value to the option's declared type."""
    low = text.strip().lower()
    if opt.optional and low == "none":
        return None
    try:
        if opt.type is bool:
            if low in _TRUE or low in _FALSE:
                return low in _TRUE
            raise ValueError(text)
        if opt.type is int:
            return int(low)
        if opt.type is float:
            return float(low)
        return text.strip()
    except ValueError:
        raise InvalidArgumentError(
            f"option {opt.name!r} of spatial layer {layer!r} takes {opt.type_name}, got {text!r} in {spec!r}") from None


def _parse_stages(text: str, spec: str) -> frozenset[int]:
    """``"4"``, ``"3-4"``, ``"1,3-4"`` -> stage numbers."""
    stages: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            first = last = 0
        if not (STAGES[0] <= first <= last <= STAGES[-1]):
            raise InvalidArgumentError(
                f"bad stages {text!r} in {spec!r}: name stages {STAGES[0]}-{STAGES[-1]} as N, N-M or a comma "
                "list (e.g. cot@4, cot@3-4, cot@2,4)")
        stages.update(range(first, last + 1))
    return frozenset(stages)


def parse_layer_spec(text: str) -> LayerSpec:
    """Parse ``NAME[:opt=value,...][@stages]`` (module docstring); names are case-insensitive.

    Raises :class:`InvalidArgumentError` with one line naming the valid names / options / stages.
    """
    spec = text.strip()
    body, at, stage_text = spec.partition("@")
    name_text, colon, option_text = body.partition(":")
    name = name_text.strip().lower()
    if not name:
        raise InvalidArgumentError(f"layer spec {text!r} has no operator name; write {_SYNTAX}")
    entry = spatial_layer_type(name)
    options: dict[str, Any] = {}
    if colon:
        if not option_text.strip():
            raise InvalidArgumentError(f"layer spec {text!r} has ':' but no options; write {_SYNTAX}")
        for item in option_text.split(","):
            key, eq, value = item.partition("=")
            key = key.strip().lower()
            if not eq or not key or not value.strip():
                raise InvalidArgumentError(
                    f"option {item.strip()!r} in {text!r} is not opt=value; {entry.name!r}: {entry.option_help()}")
            if key not in entry.options:
                raise InvalidArgumentError(
                    f"spatial layer {entry.name!r} has no option {key!r} (in {text!r}); {entry.option_help()}")
            if key in options:
                raise InvalidArgumentError(f"option {key!r} given twice in {text!r}")
            options[key] = _parse_value(entry.options[key], entry.name, value, text)
    stages = _parse_stages(stage_text, text) if at else None
    return LayerSpec(entry.name, tuple(options.items()), stages)


def as_layer_spec(value: str | LayerSpec) -> LayerSpec:
    """A spec from its text (:func:`parse_layer_spec`) or itself."""
    if isinstance(value, LayerSpec):
        return value
    if isinstance(value, str):
        return parse_layer_spec(value)
    raise InvalidArgumentError(f"a spatial layer is a spec text like 'cot:kernel=5' or a LayerSpec, got {value!r}")
