"""Importing JaxMARL quietly: its import prints a notice to stdout, which would corrupt output that
users pipe (e.g. ``macflow data info --as-json``). Something in its import chain also resets
``sys.stdout``, so ``contextlib.redirect_stdout`` is not enough; the file descriptor is redirected.
"""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def _quiet_fd1():
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            try:
                yield
            finally:
                sys.stdout.flush()
                os.dup2(saved, 1)
    finally:
        os.close(saved)


def jaxmarl():
    """The ``jaxmarl`` module with its environments imported, without its import-time prints."""
    if "jaxmarl.registration" not in sys.modules:
        streams = sys.stdout, sys.stderr
        with _quiet_fd1():
            import jaxmarl  # noqa: F401
        sys.stdout, sys.stderr = streams  # its import replaces them
    import jaxmarl

    return jaxmarl
