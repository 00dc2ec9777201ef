"""``python -m benchmarks.accuracy``: the accuracy benchmark alone (see :mod:`benchmarks.accuracy.cli`)."""

from benchmarks.accuracy.cli import main

if __name__ == "__main__":
    main()
