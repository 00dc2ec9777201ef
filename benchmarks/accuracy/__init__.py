"""Accuracy benchmark: distil a much smaller student with every method, over seeds, on real data.

Per data set, a teacher is trained once and cached by the content hash of everything that determines it (data set,
sizes, model, training settings, seed, library versions); later runs reuse it. Then each method distils the same
student architecture from it, over several seeds (a seed sets the student's initial weights and the data order).
The teacher's logits are computed once per sample (the data are not augmented).

Methods (``recipes()``; ``METHODS`` for the smoke/default/full profiles): CE only (no teacher), KD, DKD, DOT, DeepKD
as the paper describes it (KD base, the official fixed deltas, the dynamic mask), DeepKD with GSNR momentum and the
dynamic mask on the DKD base, DeepKD as the official code behaves (no mask), and the ablations that show each axis
alone: GSNR momentum without masking, the dynamic mask with plain SGD momentum, and static masks keeping 10/20/30 %
of the classes (K = 10, 20, 30 on the 100-class pairs set). Hyperparameters are the published CIFAR-100 ones, with
two length adjustments that apply to every method alike: DKD's warm-up lasts the same share of the run as 20 of
240 epochs (:func:`~benchmarks.accuracy.methods.dkd_warmup`; whole epochs, so runs under 18 epochs get none), and
GSNR coefficients are re-estimated four times per epoch.

The ``long`` profile (``LONG_METHODS`` + ``LONG_CANDIDATES``) runs long enough for DeepKD's phases and momenta to
matter: 24 epochs with CIFAR's step schedule shape (x0.1 at 62.5/75/87.5 % of the run,
:func:`~benchmarks.accuracy.profiles.step_schedule`), a validation split carved from the training data
(:func:`~benchmarks.accuracy.data.prepare`), and deepkd's default recipe (``deepkd.compose()``, run-length adjusted)
with each of its three axes switched off alone and with candidate changes of single settings. Choices of a default
are made on validation accuracy only (the "defaults chosen on validation" table); test accuracy is what is reported.

Reported per method: mean ± std over seeds of the best and final test top-1 (and the final validation top-1 when
there is a validation split), and differences from KD and from DKD paired by seed (mean ± standard error).

Run: ``python -m benchmarks.accuracy --profile smoke`` (or via ``nox -s bench``).

The modules, in the order a run uses them:

- :mod:`~benchmarks.accuracy.methods`: the method table (``TABLE``, ``LABELS``, ``CANDIDATES``), the run-length
  adjustments, and each method's recipe for a run (``recipes()``);
- :mod:`~benchmarks.accuracy.profiles`: the profiles (``PROFILES``), the models per data set, the training
  settings and the learning-rate schedule;
- :mod:`~benchmarks.accuracy.data`: seeded draws of the data sets, the validation split, the loaders;
- :mod:`~benchmarks.accuracy.teachers`: teacher training, its on-disk cache, the teacher's logits;
- :mod:`~benchmarks.accuracy.runs`: one run (a student distilled with one recipe and one seed);
- :mod:`~benchmarks.accuracy.pool`: the runs in this process or in worker processes;
- :mod:`~benchmarks.accuracy.stats`: means, standard deviations and differences paired by seed;
- :mod:`~benchmarks.accuracy.report` and :mod:`~benchmarks.accuracy.plots`: ``accuracy.md``/``.csv`` and the figures;
- :mod:`~benchmarks.accuracy.cli`: the command line, :func:`main`.
"""

from benchmarks.accuracy.cli import main
from benchmarks.accuracy.methods import ABLATIONS, CANDIDATES, LABELS, LONG_CANDIDATES, LONG_METHODS, METHODS, recipes
from benchmarks.accuracy.profiles import MODELS, PROFILES

__all__ = [
    "ABLATIONS",
    "CANDIDATES",
    "LABELS",
    "LONG_CANDIDATES",
    "LONG_METHODS",
    "METHODS",
    "MODELS",
    "PROFILES",
    "main",
    "recipes",
]
