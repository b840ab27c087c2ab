"""Command-line plumbing shared by the training entry and the model-file tools
(evaluate.py, predict.py, export.py): flags are parsed into a fresh FlagValues,
bad input ends in one line on stderr with exit code 2, an I/O failure in one
line with exit code 1, and nothing is written half-way. Imports no TensorFlow.
"""

import os
import sys
from typing import Callable, List, Optional, Tuple

from absl import flags

from sesemi_base.console import VERBOSE_ENV
from sesemi_base.errors import UsageError

HELP_ARGS = ('-h', '-help', '--help', '--helpfull', '-?')


def parse_flags(
    define: Callable[[flags.FlagValues], None], argv: List[str], doc: Optional[str] = None
) -> Tuple[flags.FlagValues, List[str]]:
    """Defines flags with ``define`` on a fresh FlagValues and parses ``argv``.

    Every tool also gets ``--verbose``: when given, it sets ``SESEMI_VERBOSE=1`` so
    that TensorFlow, imported later through compat, prints its start-up lines and
    warnings. With -h/--help/--helpfull anywhere, prints ``doc`` (default: the
    docstring of the module that defines ``define``) and the flags, and exits
    with code 0.

    Returns:
        (the parsed FlagValues, the arguments that are not flags, argv[0] excluded).

    Raises:
        UsageError: unknown or malformed flags, or a required flag missing.
    """
    fv = flags.FlagValues()
    define(fv)
    flags.DEFINE_boolean(
        'verbose',
        False,
        "Show TensorFlow's start-up lines and warnings "
        '(hidden by default; also set by %s=1).' % VERBOSE_ENV,
        flag_values=fv,
    )
    if any(arg in HELP_ARGS for arg in argv[1:]):
        print(
            '%s\n\nFlags:\n%s'
            % ((doc or sys.modules[define.__module__].__doc__ or '').strip(), fv.get_help())
        )
        raise SystemExit(0)
    try:
        positional = fv(argv)
        fv.validate_all_flags()
    except flags.Error as err:
        raise UsageError(str(err).splitlines()[0]) from err
    if fv.verbose:
        os.environ[VERBOSE_ENV] = '1'
    return fv, positional[1:]


def check_folder(folder: str) -> None:
    """Checks that files can be created in ``folder``.

    Raises:
        UsageError: the folder does not exist or is not writable.
    """
    if not os.path.isdir(folder):
        raise UsageError(
            "output folder '%s' does not exist; create it or pass another --output" % folder
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError("output folder '%s' is not writable; pass another --output" % folder)


def check_output(path: str) -> None:
    """Checks that a file can be written at ``path``.

    Raises:
        UsageError: ``path`` is a folder, or its folder does not exist or is not writable.
    """
    if os.path.isdir(path):
        raise UsageError("output '%s' is a folder; pass a file name" % path)
    check_folder(os.path.dirname(os.path.abspath(path)))


def main(
    run: Callable[[List[str]], int],
    argv: Optional[List[str]] = None,
    io_note: str = 'nothing was written',
) -> int:
    """Runs ``run(argv)``, turning bad input into one line on stderr and exit code 2,
    and an I/O failure into one line (ending in ``io_note``) and exit code 1."""
    try:
        return run(sys.argv if argv is None else argv)
    except UsageError as err:
        print('error: %s' % err, file=sys.stderr)
        return 2
    except OSError as err:  # disk full, folder removed mid-run, ...
        print(
            'error: %s: %s; %s' % (err.strerror or type(err).__name__, err.filename or '', io_note),
            file=sys.stderr,
        )
        return 1
