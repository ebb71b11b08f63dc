"""What every console script shares: turning an exception into one clear message."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from plusultra.errors import PlusUltraError
from plusultra.lifecycle import Interrupted

log = logging.getLogger(__name__)

# Exceptions that mean "the input is wrong", not "the program is wrong".
USER_ERRORS = (PlusUltraError, HydraException, OmegaConfBaseException, FileNotFoundError)


class DropMessages(logging.Filter):
    """Logging filter that drops records whose message contains `pattern` (see conf/hydra)."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return self.pattern not in record.getMessage()


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def user_error(exc: BaseException) -> BaseException | None:
    """The most specific user-caused error in the exception chain, if any."""
    found = None
    for e in _chain(exc):
        if isinstance(e, PlusUltraError):
            return e
        if found is None and isinstance(e, USER_ERRORS):
            found = e
    return found


def _instantiated_group(exc: BaseException) -> str | None:
    """The config node Hydra was instantiating when the error happened (its `full_key`)."""
    for e in _chain(exc):
        if type(e).__name__ == "InstantiationException" and "full_key: " in str(e):
            return str(e).rsplit("full_key: ", 1)[1].split()[0]
    return None


def interruption(exc: BaseException) -> Interrupted | None:
    """The `Interrupted` (SIGINT/SIGTERM) in the exception chain, if any."""
    return next((e for e in _chain(exc) if isinstance(e, Interrupted)), None)


def output_dir_from_argv(argv: list[str]) -> str:
    """paths.output_dir as the command line or PLUSULTRA_OUTPUT_DIR sets it (default outputs)."""
    out = os.environ.get("PLUSULTRA_OUTPUT_DIR", "outputs")
    for arg in argv:
        if arg.lstrip("+").startswith("paths.output_dir="):
            out = arg.split("=", 1)[1]
    return out


def _composition_hint(cause: BaseException, overrides: list[str] | None) -> str | None:
    """Hydra's unknown option / unknown key errors as one line with a did-you-mean, else None."""
    if overrides is None or not isinstance(cause, HydraException):
        return None
    from plusultra.cli.overrides import explain_composition_error

    try:
        return explain_composition_error(cause, overrides)
    except Exception as hint_exc:  # noqa: BLE001 - a hint must not mask the real error
        log.debug("no hint for %s: %s", type(cause).__name__, hint_exc)
        return None


def fail(
    prog: str,
    exc: BaseException,
    catalogue_dir: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
) -> None:
    """Print `prog: error: ...`, record a failed catalogue row if none was written, and exit.

    Exit code 2 for bad input (message only), 1 for a bug (with traceback). A run ended by
    SIGINT or SIGTERM (`plusultra.lifecycle.Interrupted`) prints `prog: interrupted (SIGTERM);
    run dir ...` and exits with 128 + the signal number (130, 143); its row says `interrupted`.
    """
    interrupted = interruption(exc)
    if catalogue_dir is not None and not getattr(exc, "_plusultra_recorded", False):
        try:
            from plusultra.catalogue.rows import record_failed_invocation

            record_failed_invocation(
                Path(catalogue_dir),
                overrides or [],
                exc,
                cwd=os.getcwd(),
                status="interrupted" if interrupted else "failed",
                run_dir=interrupted.run_dir if interrupted else None,
            )
        except Exception as rec_exc:  # noqa: BLE001 - recording must not mask the real error
            log.warning("could not record the failure in the catalogue: %s", rec_exc)
    if interrupted is not None:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        sys.exit(interrupted.exit_code)
    cause = user_error(exc)
    if cause is None:
        traceback.print_exception(exc)
        print(f"{prog}: error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
    message = str(cause).strip() or type(cause).__name__
    message = _composition_hint(cause, overrides) or message
    if isinstance(cause, OmegaConfBaseException):
        message = message.split("\n")[0]  # drop OmegaConf's full_key/object_type lines
    group = _instantiated_group(exc)
    if group and isinstance(cause, PlusUltraError) and not message.startswith(group):
        message = f"{group}: {message}"
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(getattr(cause, "exit_code", 2))
