"""Errors a user can act on.

Every failure caused by bad input (a config key, a missing file, a corrupt checkpoint, a
tokenizer that does not match a model) raises :class:`TsdfmError`. The CLI turns it into one
message on stderr and exit code 2, so a mistake is reported early and plainly instead of as a
traceback from deep inside torch.
"""

from __future__ import annotations


class TsdfmError(Exception):
    """A problem with the user's input, with the fix in the message."""

    exit_code = 2
