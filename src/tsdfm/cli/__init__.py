"""Command-line interface: ``tsdfm <command>``. Input errors exit with code 2 and one message.

This module starts and ends a run: parse (:mod:`.parser`, every flag), refuse a launch that
cannot work, dispatch (:mod:`.commands`, one handler a command), and turn a
:class:`~tsdfm.errors.TsdfmError` into exit code 2 with one line, Ctrl-C into 130 and a closed
pipe into 141, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from tsdfm.cli.commands import run as _run
from tsdfm.cli.parser import build_parser
from tsdfm.errors import TsdfmError

__all__ = ["DISTRIBUTED_COMMANDS", "build_parser", "main"]

# Commands that run under torchrun (one process per GPU); the rest are single-process jobs.
DISTRIBUTED_COMMANDS = ("train", "sample")


def _check_launch(args) -> None:
    """Refuse a single-process command started by torchrun: N copies would race on its files."""
    from tsdfm import distributed

    if args.command not in DISTRIBUTED_COMMANDS and distributed.launched_world_size() > 1:
        raise TsdfmError(
            f"`tsdfm {args.command}` runs in one process; start it without torchrun (only "
            "`tsdfm train ...` and `tsdfm sample` are distributed, see docs/scale-out.md)"
        )


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line, letting flags and ``key=value`` overrides interleave.

    argparse fills a ``nargs="*"`` positional from the first run of positionals only, so
    ``train student a=1 --no-progress b=2`` would refuse ``b=2``. Leftover ``key=value``
    tokens are appended (in order) to the overrides; anything else is still an error.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        overridable = hasattr(args, "overrides")
        stray = [t for t in extra if not (overridable and "=" in t and not t.startswith("-"))]
        if stray:
            parser.error(f"unrecognized arguments: {' '.join(stray)}")
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        _check_launch(args)
        status = _run(args)
        sys.stdout.flush()  # inside the try: a reader that left early is a BrokenPipeError here
        return status
    except TsdfmError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _broken_pipe()
    finally:
        from tsdfm import distributed

        distributed.shutdown()


def _broken_pipe() -> int:
    """The reader of our output went away (``tsdfm sample | head``): stop quietly, like a
    process ended by SIGPIPE (status 141), instead of a traceback. Output still buffered for
    the closed pipe is sent to /dev/null so the interpreter's final flush cannot fail again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141
