"""``python -m tsdfm``: the same command line as the ``tsdfm`` entry point, for checkouts run
from source (``PYTHONPATH=src``) where the package is not installed."""

from tsdfm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())  # the exit code (2 for bad input) reaches the shell
