"""``python -m xqute``: the ``xqute`` command (see xqute.cli)."""

import sys

from .cli import main as _cli_main


def main() -> int:
    """Console-script entry point."""
    return _cli_main()


if __name__ == "__main__":
    sys.exit(main())
