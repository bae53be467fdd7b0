"""Layers: the CoT/CoXt operators and the paper's ablations, local self-attention, the other spatial operators,
the name -> operator factory and its specs."""

from cotviz.layers.ablations import CotConcat, CotDynamic, CotLinear, CotStatic
from cotviz.layers.aggregation import LocalAggregation
from cotviz.layers.blur import BlurPool2d
from cotviz.layers.conv import ConvBnAct
from cotviz.layers.cot import TAP_NAMES, CotLayer, CoXtLayer
from cotviz.layers.downsample import (
    Downsample,
    create_downsample,
    list_downsample_modes,
    register_downsample_mode,
)
from cotviz.layers.factory import (
    LayerOption,
    SpatialLayerType,
    create_spatial_layer,
    list_spatial_layers,
    register_spatial_layer,
    spatial_layer_type,
)
from cotviz.layers.self_attention import LocalRelation, LocalSelfAttention
from cotviz.layers.spec import PLAIN_LAYER, STAGES, LayerSpec, as_layer_spec, parse_layer_spec
from cotviz.layers.split_attn import SplitAttnConv2d
from cotviz.layers.tap import Tap

__all__ = [
    "PLAIN_LAYER", "STAGES", "TAP_NAMES", "BlurPool2d", "ConvBnAct", "CotConcat", "CotDynamic", "CotLayer",
    "CotLinear", "CotStatic", "CoXtLayer", "Downsample", "LayerOption", "LayerSpec", "LocalAggregation",
    "LocalRelation", "LocalSelfAttention", "SpatialLayerType", "SplitAttnConv2d", "Tap", "as_layer_spec",
    "create_downsample", "create_spatial_layer", "list_downsample_modes", "list_spatial_layers", "parse_layer_spec",
    "register_downsample_mode", "register_spatial_layer", "spatial_layer_type",
]
