"""Checks that reproduce the measurements quoted in ``docs/algorithm.md``: the GSNR estimator, the collapse of the
renormalised mask form, and the mask-schedule cliff.

Run one with ``python -m benchmarks.algorithm {estimator,collapse,cliff} [--quick] [--out DIR]``. Each writes
``<check>.json`` (what it measured, its settings, the commit, date, command, machine and versions) and
``<check>.md`` into ``--out`` (default ``docs/algorithm-checks``; ``--quick`` writes ``<check>-quick.*``). Full mode
trains on the local Fashion-MNIST files (never downloading) with a teacher it trains itself and caches under
``~/.cache/deepkd/algorithm``; each check takes a few minutes on a 2-core CPU. ``--quick`` uses scikit-learn's
bundled digits or small synthetic tensors and takes seconds; its figures show the structure, not the effects.

The modules:

- :mod:`~benchmarks.algorithm.common`: data, models, the cached teacher, the training loop, the report files;
- :mod:`~benchmarks.algorithm.estimator`: the stream GSNR estimator against GSNR at frozen parameters, its floor;
- :mod:`~benchmarks.algorithm.collapse`: renormalised against bucketed NCKD under a K = 10 mask on 100 classes;
- :mod:`~benchmarks.algorithm.cliff`: a K that jumps at an epoch boundary against deepkd's per-step schedule;
- :mod:`~benchmarks.algorithm.cli`: the command line, :func:`main`.
"""

from benchmarks.algorithm.cli import CHECKS, main

__all__ = ["CHECKS", "main"]
