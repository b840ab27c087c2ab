"""What reaches the console while TensorFlow loads.

TensorFlow's C++ runtime writes start-up lines before its logging is initialised
(the oneDNN notice, "Could not find cuda drivers", the ``cuInit`` error of a host
without a GPU), which ignore ``TF_CPP_MIN_LOG_LEVEL``; ``sesemi_base.compat`` sets
stderr aside while TensorFlow loads unless ``SESEMI_VERBOSE=1`` is in the
environment, which every tool's ``--verbose`` sets before TensorFlow loads.
"""

import contextlib
import os
import sys
import tempfile

# Read when TensorFlow is imported: set, TensorFlow's console output is left as is.
VERBOSE_ENV = 'SESEMI_VERBOSE'


def verbose() -> bool:
    """Whether ``SESEMI_VERBOSE`` asks for TensorFlow's own console output."""
    return os.environ.get(VERBOSE_ENV, '') not in ('', '0')


@contextlib.contextmanager
def stderr_set_aside(hide: bool = True):
    """Sends everything written to file descriptor 2 (C++ and Python alike) to a
    temporary file while the block runs; if the block raises, what was written is
    printed to stderr before the exception goes on. A no-op when ``hide`` is False
    or descriptor 2 cannot be duplicated."""
    try:
        saved = os.dup(2) if hide else None
    except OSError:  # no stderr at all: nothing to hide
        saved = None
    if saved is None:
        yield
        return
    with tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        os.dup2(capture.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)  # restored before any error of the program itself is printed
            os.close(saved)
            if failed:
                capture.seek(0)
                sys.stderr.write(capture.read().decode('utf-8', 'replace'))
                sys.stderr.flush()
