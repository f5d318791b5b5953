"""The ``speechllama`` command: argparse subcommands, each calling one library function."""

from __future__ import annotations

import os
import signal
import sys
import threading

from ..errors import UserError
from .parser import build_parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv

    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops like Ctrl-C, children included
    try:
        return args.func(args)
    except (UserError, OSError) as e:
        if not _users_error(e) or os.environ.get("SPEECHLLAMA_DEBUG"):
            raise  # a bug keeps its traceback
        print(f"speechllama: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("speechllama: interrupted (the last checkpoint is intact; use --resume)",
              file=sys.stderr)
        return 130
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


def _users_error(e: BaseException) -> bool:
    """One line for the user's mistakes (errors.py): a UserError, or an OS error about a named file
    (missing, unreadable, a full disk). Everything else is a bug and keeps its traceback."""
    return isinstance(e, UserError) or (isinstance(e, OSError) and e.filename is not None)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
