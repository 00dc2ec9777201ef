"""deepkd's benchmarks: speed (``benchmarks.speed``) and accuracy (``benchmarks.accuracy``), run by ``nox -s bench``."""
