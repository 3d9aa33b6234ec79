"""A message to the user: one channel, Python's ``logging``, in the logger tree ``convnext``.

A message is a fact found along the way that is neither an error (``errors.UserError``) nor what a verb
returns: a note (``note``: INFO, "bf16 is emulated on this CPU") or a warning (``warn``: WARNING, "skipped 2
unreadable files"). Each goes to the module's own logger, ``logging.getLogger(__name__)`` of the caller, so
a library user configures them the standard way: ``logging.basicConfig(level=logging.INFO)`` shows the notes
too, ``logging.getLogger("convnext").setLevel(logging.ERROR)`` silences both, and with no configuration at
all Python's last-resort handler still prints warnings (as ``warnings.warn`` did) but not notes. The command
line calls ``install_cli_handler(verb)`` once, which prints them on stderr as ``convnext <verb>: note: ...``
and ``convnext <verb>: warning: ...``, next to ``convnext <verb>: error: ...``; under torchrun only rank 0
prints them, as torchvision's references silence every other rank (each rank would say the same thing).

Not messages, and so not here (tests/test_messages.py names each exception):

- what a verb produces: its stdout tables and JSON (cli/), and a training run's own log on stderr (the run's
  description, "resuming ...", the per-epoch lines, the tracker's address: ``engine/train/console.py``),
  which is the run's output, read top to bottom as a record of the run;
- progress: tqdm bars, and the ``progress`` callbacks of export and benchmark ("exporting ... to ONNX",
  "round 2/5") that the caller renders (the CLI as ``[export] ...``; a notebook passes ``print`` or nothing);
- a deprecated call (``models/factory.py``): ``warnings.warn(DeprecationWarning)`` is the field's signal to a
  programmer, filtered and turned into errors with ``-W``; models/ also imports nothing of the package;
- serve's request and lifecycle lines: uvicorn's own logger (``uvicorn.error``), which ``--log-level`` sets
  with uvicorn's, so they read as one server log;
- a signal handler's line (``engine/train/signals.py``): logging takes locks, which a handler may not;
- the kill tests' pause protocol (``engine/pauses.py``), read by the tests, not by a user.

Stdlib only, so that every layer may import it (like ``errors.py`` and ``telemetry.py``).
"""

from __future__ import annotations

import logging
import os
import sys

ROOT = "convnext"

_said: set[tuple[int, str]] = set()  # (level, text) said in this process or command (once=True)
_cli: _CliHandler | None = None
_set_level = False  # install_cli_handler set the tree's level (and remove_cli_handler unsets it)


def note(msg: str, *, once: bool = True) -> None:
    """A fact the user should know (INFO on the caller's logger); ``once``: the same text once a process."""
    _say(logging.INFO, msg, once)


def warn(msg: str, *, once: bool = True) -> None:
    """Something is wrong but the work goes on (WARNING on the caller's logger); ``once`` as in ``note``."""
    _say(logging.WARNING, msg, once)


def _say(level: int, msg: str, once: bool) -> None:
    frame = sys._getframe(2)  # the module that called note/warn: its logger, as getLogger(__name__) there
    name = frame.f_globals.get("__name__", ROOT)
    log = logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".") else ROOT)
    if not log.isEnabledFor(level):  # silenced: not marked as said, so it shows once enabled
        return
    if once:
        key = (level, msg)
        if key in _said:
            return
        _said.add(key)
    log.log(level, msg, stacklevel=3)


class _CliHandler(logging.Handler):
    """``convnext <verb>: note: ...`` on the current ``sys.stderr`` (looked up per line, so that a test's
    captured stderr gets it too)."""

    def __init__(self, verb: str) -> None:
        super().__init__(logging.INFO)
        self.verb = verb

    def emit(self, record: logging.LogRecord) -> None:
        kind = (
            "note"
            if record.levelno < logging.WARNING
            else "warning"
            if record.levelno < logging.ERROR
            else "error"
        )
        try:
            sys.stderr.write(f"convnext {self.verb}: {kind}: {record.getMessage()}\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def install_cli_handler(verb: str) -> None:
    """Print the package's messages on stderr as the command line says them (``convnext <verb>: ...``).

    Called once by ``cli/main.py``; calling it again (tests run verbs in one process) only changes the verb.
    A logger level the caller set on ``convnext`` is kept; otherwise notes show (INFO). Another process rank
    than 0 of a torchrun job prints none. ``once`` counts from here: each command says its own notes, also
    when several run in one process."""
    global _cli, _set_level
    log = logging.getLogger(ROOT)
    _said.clear()
    if _cli is None:
        _cli = _CliHandler(verb)
        log.addHandler(_cli)
    _cli.verb = verb
    if os.environ.get("RANK", "0") != "0":
        _cli.setLevel(logging.CRITICAL + 1)
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
        _set_level = True


def cli_verb(default: str = "train") -> str:
    """The verb the command line runs now (``pretrain`` shares training's loop and its log lines)."""
    return _cli.verb if _cli is not None else default


def remove_cli_handler() -> None:
    """Undo ``install_cli_handler`` (the end of an in-process ``main``): a library caller gets logging's
    defaults back, and its own ``once``."""
    global _cli, _set_level
    log = logging.getLogger(ROOT)
    _said.clear()
    if _cli is not None:
        log.removeHandler(_cli)
        _cli = None
    if _set_level:
        log.setLevel(logging.NOTSET)
        _set_level = False
