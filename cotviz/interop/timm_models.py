"""The timm entrypoints of the cotviz variants, created by :func:`cotviz.interop.register_timm`.

timm's ``register_model`` files each entrypoint under the module that defines it: it appends the name to
this module's ``__all__`` and reads its pretrained cfg from this module's ``default_cfgs`` (so
``timm.list_models(module="timm_models")`` lists them and ``timm.models.get_pretrained_cfg(name)`` knows
their preprocessing). Empty until ``register_timm()`` runs.
"""

from __future__ import annotations

from typing import Any

__all__: list[str] = []

#: timm ``PretrainedCfg`` fields per registered timm name (filled by ``register_timm``).
default_cfgs: dict[str, dict[str, Any]] = {}
