"""The published distillation methods as deepkd recipes, with their papers' hyperparameters.

No maths lives here: every method is a :func:`deepkd.compose` of registered strategies.

>>> from baselines import presets
>>> print(presets.cifar100("deepkd_paper", teacher="resnet32x4", student="resnet8x4").momentum)
FixedOffsets(tog=0.075, tcg=-0.075, ncg=0.075, reference_quirks=False)
"""

from baselines import presets

__all__ = ["presets"]
