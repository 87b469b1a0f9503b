"""``python -m tsdfm.cli``: what torchrun launches (``torchrun ... -m tsdfm.cli train ...``)."""

from tsdfm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())  # the exit code (2 for bad input) reaches the shell
