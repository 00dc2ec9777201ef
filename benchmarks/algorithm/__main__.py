"""``python -m benchmarks.algorithm {estimator,collapse,cliff} [--quick] [--out DIR]`` (:mod:`benchmarks.algorithm`)."""

from benchmarks.algorithm.cli import main

if __name__ == "__main__":
    main()
