"""Named, parameter-free observation points inside layers.

A :class:`Tap` returns its input unchanged. It exists so that every tensor worth looking at flows
through a named submodule that a forward hook can observe (lucidrains' ``Recorder`` pattern), without
``return_attention=True`` flags. It adds no state_dict keys; with no hook attached PyTorch's module
call takes its hook-free fast path.

Under ``torch.fx`` symbolic tracing (``torch.fx.symbolic_trace``, torchvision's
``create_feature_extractor`` / ``get_graph_node_names``) a tap records itself as one ``call_module`` node,
as a leaf module would, so every tap is a graph node named by its module path
(``layer3.0.conv2.attention``) without ``tracer_kwargs`` (:func:`fx_leaf_call`).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, fx, nn

__all__ = ["Tap", "fx_leaf_call"]


def fx_leaf_call(module: nn.Module, *args: Any) -> fx.Proxy | None:
    """During ``torch.fx`` symbolic tracing (some argument is an ``fx.Proxy``): record ``module`` called on
    ``args`` as one ``call_module`` node, exactly what the tracer does for a leaf module, and return its
    Proxy. Otherwise (eager, torch.compile, torch.export, jit.trace: real or fake tensors) None.

    A module whose forward starts with ``traced = fx_leaf_call(self, x); if traced is not None: return
    traced`` is a leaf for every fx tracer, whatever its ``is_leaf_module`` says, and its Python checks
    on shapes never see a Proxy. A module that is not a submodule of the traced root is traced through.
    """
    for a in args:
        if isinstance(a, fx.Proxy):
            tracer = a.tracer
            try:
                path = tracer.path_of_module(module)  # type: ignore[attr-defined]
            except NameError:
                return None
            if not path:  # the module is the traced root itself
                return None
            proxy: fx.Proxy = tracer.create_proxy("call_module", path, args, {})
            return proxy
    return None


class Tap(nn.Module):
    """Identity module marking a tensor that :func:`cotviz.capture` can record (a graph node under fx)."""

    def forward(self, x: Tensor) -> Tensor:
        traced = fx_leaf_call(self, x)
        return x if traced is None else traced  # type: ignore[return-value]
