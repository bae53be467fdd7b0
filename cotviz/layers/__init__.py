"""Layers: the CoT/CoXt operators, the other spatial operators and the name -> operator factory."""

from cotviz.layers.aggregation import LocalAggregation
from cotviz.layers.blur import BlurPool2d
from cotviz.layers.conv import ConvBnAct
from cotviz.layers.cot import TAP_NAMES, CotLayer, CoXtLayer
from cotviz.layers.factory import create_spatial_layer, list_spatial_layers, register_spatial_layer
from cotviz.layers.split_attn import SplitAttnConv2d
from cotviz.layers.tap import Tap

__all__ = [
    "TAP_NAMES", "BlurPool2d", "ConvBnAct", "CotLayer", "CoXtLayer", "LocalAggregation", "SplitAttnConv2d",
    "Tap", "create_spatial_layer", "list_spatial_layers", "register_spatial_layer",
]
