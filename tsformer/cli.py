"""One error policy for every command (train, export, forecast, transcribe, generate).

An input or configuration problem -- a file that is missing, empty or malformed, a config
key that is unset or unknown, a checkpoint that cannot be resumed or exported -- prints one
line on stderr, ``error: <file>: <what>, <where>``, and exits with status 2 without leaving
anything behind (no run directory holding only Hydra's own files). Anything else is a bug
and keeps its full traceback.

The project's errors (:class:`~tsformer.data.errors.DataError`,
:class:`~tsformer.export.ExportError`, :class:`~tsformer.callbacks.CheckpointError`,
:class:`ConfigError`) already name the file and the row, column or key; this module only
decides which exceptions are the user's to fix and prints them. Commands use
:func:`command` (plain ``key=value`` mains) or :func:`user_errors` (the Hydra main).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

EXIT_USER_ERROR = 2  # what argparse and most Unix tools use for a usage error


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


def _user_error_types() -> tuple[type[BaseException], ...]:
    # Imported here: the classes live in modules that import this one.
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    from tsformer.callbacks import CheckpointError
    from tsformer.data.errors import DataError
    from tsformer.export import ExportError

    return (DataError, ExportError, CheckpointError, ConfigError, FileNotFoundError, IsADirectoryError,
            NotADirectoryError, OmegaConfBaseException, ConfigCompositionException, MissingConfigException,
            OverrideParseException)


def user_error(exc: BaseException) -> BaseException | None:
    """The exception to report if ``exc`` is an input or configuration problem, else None.

    Hydra's ``instantiate`` wraps what a constructor raises; the cause is what counts. A
    constructor called with a key it does not take (``TypeError: ... unexpected keyword
    argument``) is a config problem too.
    """
    from hydra.errors import InstantiationException

    if isinstance(exc, InstantiationException):
        cause = exc.__cause__
        if isinstance(cause, TypeError) and "unexpected keyword argument" in str(cause):
            return exc
        return user_error(cause) if cause is not None else exc
    from omegaconf.errors import InterpolationResolutionError

    if isinstance(exc, InterpolationResolutionError) and exc.__cause__ is not None:
        inner = user_error(exc.__cause__)  # e.g. a resolver's ConfigError
        if inner is not None:
            return inner
    return exc if isinstance(exc, _user_error_types()) else None


def format_error(exc: BaseException) -> str:
    """``error: <file>: <what>, <where>`` on one line."""
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, OSError) and exc.filename is not None:
        what = {FileNotFoundError: "no such file or folder", IsADirectoryError: "is a folder, not a file",
                NotADirectoryError: "is not a folder"}.get(type(exc), exc.strerror or str(exc))
        text = f"{exc.filename}: {what}"
    elif isinstance(exc, OmegaConfBaseException):
        text = f"config: {_omegaconf_message(exc)}"
    elif type(exc).__module__.startswith("hydra"):
        # "Could not override 'data.pth'. To append ... use +data.pth=1" and the OmegaConf cause
        first, _, hint = str(exc).split("\nConfig search path:")[0].partition("\n")
        if "Available options" in hint:  # an unknown group option: the options, on the same line
            head, _, options = hint.strip().partition("\n")
            hint = head.replace("Available options", "options") + " " + ", ".join(options.split())
        cause = exc.__cause__
        why = _omegaconf_message(cause) if isinstance(cause, OmegaConfBaseException) else cause
        text = f"config: {first.rstrip('.')}" + (f": {why}" if why else "") + (f" ({hint.strip()})" if hint else "")
    else:
        text = str(exc) or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Set the environment variable HYDRA_FULL_ERROR")]
    return "error: " + "; ".join(lines)


def _omegaconf_message(exc: BaseException) -> str:
    """OmegaConf's message without its multi-line context, with the key it names."""
    msg = (getattr(exc, "msg", None) or str(exc)).split("\n")[0].strip()
    key = getattr(exc, "full_key", None)
    return msg + (f", key {key}" if key and str(key) not in msg else "")


@contextlib.contextmanager
def user_errors(cleanup: Callable[[], None] | None = None) -> Iterator[None]:
    """Report input and configuration problems as one line and exit with status 2.

    Args:
        cleanup: called before exiting on such an error, e.g. to remove the run directory
            Hydra created for a run that never started.
    Raises:
        SystemExit: status 2 on an input or configuration problem; anything else propagates.
    """
    try:
        yield
    except Exception as exc:
        reported = user_error(exc)
        if reported is None:
            raise
        if cleanup is not None:
            cleanup()
        print(format_error(reported), file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None


def discard_run_dir(run_dir: Path, keep_above: Path | None = None) -> None:
    """Remove a run directory that holds only Hydra's own files (``.hydra/``, ``*.log``),
    and the folders above it that are left empty, up to ``keep_above`` (default: the
    working directory). A directory that holds anything else (an earlier run's checkpoints)
    is left alone."""
    run_dir = Path(run_dir).absolute()
    if not run_dir.is_dir():
        return
    if any(not (p.name == ".hydra" or (p.is_file() and p.suffix == ".log")) for p in run_dir.iterdir()):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    stop = Path(keep_above or os.getcwd()).absolute()
    parent = run_dir.parent
    while parent != stop and stop in parent.parents:
        try:
            parent.rmdir()  # only succeeds while empty
        except OSError:
            break
        parent = parent.parent


def help_text(doc: str | None, defaults: dict[str, Any]) -> str:
    """The module docstring's usage lines and every ``key=default``."""
    width = max(map(len, defaults), default=0)
    rows = [f"  {k:<{width}} = {'null' if v is None else v}" for k, v in defaults.items()]
    if "decode" in defaults:  # tsformer.export.load_decode
        rows.append("  decode.<key>=...: a key of tsformer/conf/decode/<decode>.yaml (e.g. decode.block=8)")
    return (doc or "").strip() + "\n\nKeys (key=value; defaults shown):\n" + "\n".join(rows)


def command(defaults: dict[str, Any] | Callable[[], dict[str, Any]], doc: str | None = None):
    """Decorate a ``main(argv=None)`` with the error policy and ``--help``.

    ``--help`` / ``-h`` prints ``doc`` and the keys with their defaults. ``raise
    SystemExit("message")`` from the main (a usage error) is reported like any other input
    problem: one ``error:`` line, status 2.

    Args:
        defaults: the command's keys and defaults (or a function returning them).
        doc: the help text above the keys (the module docstring).
    """

    def wrap(main: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(main)
        def wrapper(argv: list[str] | None = None) -> Any:
            args = sys.argv[1:] if argv is None else list(argv)
            if "--help" in args or "-h" in args:
                print(help_text(doc, defaults() if callable(defaults) else defaults))
                return 0
            try:
                with user_errors():
                    return main(args)
            except SystemExit as e:
                if not isinstance(e.code, str):
                    raise
                lines = [line.strip() for line in e.code.splitlines() if line.strip()]
                text = "; ".join(lines)
                print(text if text.startswith("error:") else f"error: {text}", file=sys.stderr, flush=True)
                raise SystemExit(EXIT_USER_ERROR) from None

        return wrapper

    return wrap
