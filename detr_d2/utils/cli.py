"""The command-line skeleton shared by the tools (``tools/*.py``, ``datasets/prepare_*.py``).

A tool defines an ``argparse`` parser and a ``run(args) -> int`` function and ends with::

    def main(argv=None) -> int:
        return run_tool(run, build_parser(), argv)

    if __name__ == "__main__":
        sys.exit(main())

Expected failures -- bad input or files (``ValueError``, ``KeyError``, ``OSError`` such as a
missing, existing or unwritable file) -- end the tool with one line ``error: <message>`` on stderr
and exit code 1, no traceback; Ctrl-C exits with 130. Set ``DETR_D2_DEBUG=1`` to get the traceback
instead. Anything else (a bug) is raised as usual.
"""

import argparse
import logging
import os
import sys
from typing import Callable, Optional, Sequence

__all__ = ["EXPECTED_ERRORS", "run_tool", "tool_parser"]

EXPECTED_ERRORS = (ValueError, KeyError, OSError)


def tool_parser(doc: Optional[str]) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` whose ``--help`` prints the tool's module docstring as written."""
    return argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def run_tool(
    run: Callable[[argparse.Namespace], Optional[int]],
    parser: argparse.ArgumentParser,
    argv: Optional[Sequence[str]] = None,
) -> int:
    """Parse ``argv`` with ``parser`` and call ``run(args)``; returns the exit code (see module
    doc)."""
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        return int(run(args) or 0)
    except EXPECTED_ERRORS as e:
        if os.environ.get("DETR_D2_DEBUG"):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
