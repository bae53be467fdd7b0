"""Sanity checks of the maps: parameter randomisation (Adebayo et al. 2018) through the explain runner.

::

    from cotviz.sanity import sanity, sanity_figure
    result = sanity(model, "photos/", stage=3)          # cascading + independent randomisation
    result.insensitive                                   # maps whose similarity stays above the threshold

* :mod:`cotviz.sanity.randomize` -- units in reverse execution order, :class:`Randomizer`
* :mod:`cotviz.sanity.runner` -- :func:`sanity`, :class:`SanityResult`
* :mod:`cotviz.sanity.render` -- table / JSON / CSV / markdown, :func:`sanity_figure`
"""

from __future__ import annotations

from cotviz.sanity.randomize import RandomizationStep, Randomizer, Unit, randomization_units
from cotviz.sanity.render import RENDERERS, render_table, sanity_figure
from cotviz.sanity.runner import GRADCAM, SanityResult, SanityStep, sanity

__all__ = ["GRADCAM", "RENDERERS", "RandomizationStep", "Randomizer", "SanityResult", "SanityStep", "Unit",
           "randomization_units", "render_table", "sanity", "sanity_figure"]
