"""The command-line convention of the kit's tools: a usage error is one line on stderr and exit status 2.

    ap = ArgumentParser(prog="python -m records")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=ArgumentParser)

argparse's own errors (an unknown option, a value of the wrong type) then print
``records pack: error: <what> (see python -m records pack --help)`` instead of the usage block.
"""

from __future__ import annotations

import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose errors are one line on stderr, exit status 2."""

    def error(self, message):
        name = self.prog.removeprefix("python -m ")
        sys.stderr.write(f"{name}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)
