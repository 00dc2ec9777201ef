"""The published methods' recipes: :mod:`deepkd.presets`, under the name they had before they shipped with deepkd.

``from baselines import presets`` keeps working in a checkout; elsewhere, ``from deepkd import presets``.
"""

from deepkd.presets import *  # noqa: F403
from deepkd.presets import __all__  # noqa: F401
