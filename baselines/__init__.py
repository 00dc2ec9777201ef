"""The published distillation methods as deepkd recipes, with their papers' hyperparameters, and their config files.

No maths lives here: every method is a :func:`deepkd.compose` of registered strategies. The presets themselves ship
with deepkd (:mod:`deepkd.presets`); ``baselines.presets`` is that module under its earlier name, and
``baselines/make_configs.py`` writes ``baselines/configs/`` from it.

>>> from baselines import presets
>>> print(presets.cifar100("deepkd_paper", teacher="resnet32x4", student="resnet8x4").momentum)
FixedOffsets(tog=0.075, tcg=-0.075, ncg=0.075, reference_quirks=False, preserve_step=False)
"""

from baselines import presets

__all__ = ["presets"]
