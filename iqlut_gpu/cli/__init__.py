"""The ``iqlut`` command line.

Each subcommand lives in its own module of this package with ``add_parser(sub)`` (which
registers it and sets ``func``) and is listed in ``SUBCOMMANDS``. ``main`` turns every
expected failure into one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = ("upscale", "info", "video", "train", "eval", "bench")

EXIT_OK, EXIT_FAIL, EXIT_INTERRUPTED = 0, 1, 130  # argparse exits 2 on usage errors


class CLIError(Exception):
    """An expected failure: the message is printed as one line and the exit code is 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iqlut", description="IQ-LUT lookup-table super-resolution")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}_cmd").add_parser(sub)
    return parser


def _expected_errors() -> tuple:
    from ..backends import BackendUnavailable
    from ..io import ImageError
    from ..model import ModelError

    return (CLIError, ModelError, ImageError, BackendUnavailable, ValueError, TypeError, OSError)


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while a KeyboardInterrupt was being handled (in its
    ``__context__`` chain): a Ctrl-C that landed inside a lock's wait can turn into
    ``RuntimeError: release unlocked lock`` on the way out, and it is still the interrupt."""
    seen = exc.__context__
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__context__
    return False


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as the CLI's other messages: one line, no source location."""
    print(f"iqlut: warning: {message}", file=file or sys.stderr)


def main(argv=None) -> int:
    import warnings

    from ..backends import BackendFallbackWarning

    parser = build_parser()
    args = parser.parse_args(argv)
    # The commands print the backend they used; the library's fallback warning would only
    # add a second stderr line (and break "one line per error").
    warnings.simplefilter("ignore", BackendFallbackWarning)
    warnings.showwarning = _warning_line
    from .. import backends

    backends.LEAN_NUMBA = True  # this process runs only iqlut's kernels: no SciPy BLAS
    try:
        code = int(args.func(args) or EXIT_OK)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handlers below
        return code
    except KeyboardInterrupt:
        print("iqlut: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `iqlut info | head`: the reader left; not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAIL
    except _expected_errors() as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"iqlut {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_FAIL
    except RuntimeError as e:  # after the expected ones: BackendUnavailable is one
        if _interrupted(e):  # a lock left in a bad state by Ctrl-C inside its wait
            print("iqlut: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        raise


if __name__ == "__main__":
    sys.exit(main())
