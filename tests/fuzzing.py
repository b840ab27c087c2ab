"""What the fuzz tests share: the damage done to a valid file, the example budgets, and
the contract a reader or a tool must keep with a damaged file.

The contract: a reader either accepts the file and returns a valid result, or raises
``UsageError`` with one line that names the file (or ``OSError`` with the file's name,
an I/O failure); anything else is a traceback and fails the test. A tool run on a
damaged file exits with code 2 (bad input) or 1 (I/O) and exactly one line on stderr
starting with 'error:', no traceback, and leaves the files of its folders as they were.
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

import pytest
from conftest import FUZZ_EXAMPLES_ENV, FUZZ_PROFILE, ROOT
from hypothesis import note, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from sesemi_base.errors import UsageError

# Subprocess cases per format and suite: each one starts Python (and some TensorFlow).
SUBPROCESS_CASES = 3
# A RuntimeWarning of the project's readers (numpy's, raised in their lines) or an exception
# that Python can only print would be lines on stderr beside the one error line: in the fuzz
# tests they fail the case. (TensorFlow's own import warnings are left as they are.)
STRICT = pytest.mark.filterwarnings(
    'error::RuntimeWarning:dataset',
    'error::RuntimeWarning:sesemi_tf',
    'error::RuntimeWarning:sesemi_base',
    'error::RuntimeWarning:evaluate',
    'error::pytest.PytestUnraisableExceptionWarning',
)
IS_ROOT = hasattr(os, 'geteuid') and os.geteuid() == 0
ROOT_SKIP_REASON = 'runs as root, which reads files whatever their permission bits'


def examples(ci: int) -> int:
    """The examples per property: ``ci`` in CI, SESEMI_FUZZ_EXAMPLES in a long run."""
    value = os.environ.get(FUZZ_EXAMPLES_ENV)
    return int(value) if value else ci


def budget(ci: int) -> settings:
    """The fuzz profile's settings with a format's CI budget of ``ci`` examples."""
    return settings(settings.get_profile(FUZZ_PROFILE), max_examples=examples(ci))


# ------------------------------------------------------------------ byte damage


def damaged_bytes(raw: bytes, head: int = 64) -> st.SearchStrategy:
    """``raw`` with drawn damage: cut at any byte, bytes flipped (anywhere or in the
    first ``head`` bytes, where a header is), a span overwritten, bytes inserted or
    appended, or nothing left. (A closure: the strategy's repr leaves ``raw`` out.)"""

    @st.composite
    def damage(draw) -> bytes:
        return _damage(draw, raw, head)

    return damage()


def _damage(draw, raw: bytes, head: int) -> bytes:
    kind = draw(
        st.sampled_from(['truncate', 'flip', 'flip_head', 'overwrite', 'insert', 'append', 'empty'])
    )
    size = len(raw)
    out = bytearray(raw)
    if kind == 'truncate' and size:
        cut = draw(st.integers(0, size - 1))
        out = out[:cut]
        note('truncated to %d of %d bytes' % (cut, size))
    elif kind in ('flip', 'flip_head') and size:
        top = min(size, head) if kind == 'flip_head' else size
        flips = draw(
            st.lists(
                st.tuples(st.integers(0, top - 1), st.integers(1, 255)), min_size=1, max_size=8
            )
        )
        for at, mask in flips:
            out[at] ^= mask
        note('flipped %s' % flips)
    elif kind == 'overwrite' and size:
        at = draw(st.integers(0, size - 1))
        junk = draw(st.binary(min_size=1, max_size=64))
        out[at : at + len(junk)] = junk
        note('overwrote at %d with %r' % (at, junk))
    elif kind == 'insert':
        at = draw(st.integers(0, size))
        junk = draw(st.binary(min_size=1, max_size=64))
        out[at:at] = junk
        note('inserted %r at %d' % (junk, at))
    elif kind == 'append':
        junk = draw(st.binary(min_size=1, max_size=256))
        out += junk
        note('appended %r' % junk)
    else:
        out = bytearray()
        note('emptied')
    return bytes(out)


# ------------------------------------------------------------------- JSON damage

# Values a JSON file may hold where another was expected: wrong types, huge and
# negative numbers, non-finite floats, strings with line breaks, nested containers.
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(['', 'a\nb', '\r', '0', '1', 'x' * 300, '../..', '\u00b2']),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


@st.composite
def damaged_json(draw, obj):
    """A JSON value like ``obj`` with drawn damage at one place in its tree: a key
    dropped or added, a value replaced by a value of another kind, or the whole
    replaced (a list, a scalar, a deeply nested array)."""
    kind = draw(st.sampled_from(['drop', 'add', 'replace', 'replace', 'whole', 'deep']))
    if kind == 'deep':
        depth = draw(st.sampled_from([100, 10000, 200000]))
        note('nested %d deep' % depth)
        return _Raw('[' * depth + ']' * depth)
    if kind == 'whole':
        return draw(json_values)
    obj = json.loads(json.dumps(obj))
    # The containers of the tree, the root first.
    containers = []

    def walk(node):
        if isinstance(node, (dict, list)):
            containers.append(node)
            for child in node.values() if isinstance(node, dict) else node:
                walk(child)

    walk(obj)
    node = draw(st.sampled_from(containers))
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    if kind == 'add' or not keys:
        value = draw(json_values)
        if isinstance(node, dict):
            node[draw(st.text(max_size=12))] = value
        else:
            node.append(value)
        note('added %r' % (value,))
    elif kind == 'drop':
        key = draw(st.sampled_from(keys))
        del node[key]
        note('dropped %r' % (key,))
    else:
        key = draw(st.sampled_from(keys))
        node[key] = draw(json_values)
        note('set %r to %r' % (key, node[key]))
    return obj


class _Raw(str):
    """Text written to a file as it is (not as a JSON string)."""


def json_text(value) -> str:
    """The text of a file holding ``value`` (``_Raw`` text as it is)."""
    if isinstance(value, _Raw):
        return str(value)
    return json.dumps(value)


# ---------------------------------------------------------------- file damage


def write(path: str, raw: bytes) -> None:
    """Writes ``raw`` at ``path``, replacing a file or a folder there."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    with open(path, 'wb') as f:
        f.write(raw)


def make_folder(path: str) -> None:
    """Puts an empty folder where the file ``path`` was."""
    if os.path.lexists(path):
        os.remove(path)
    os.makedirs(path)


# ---------------------------------------------------------------- the contract


def _note(text: str) -> None:
    """``note`` inside a hypothesis example; nothing in a plain test."""
    with contextlib.suppress(InvalidArgument):
        note(text)


class Refused:
    """A reader's refusal: the one-line message (or the OSError)."""

    def __init__(self, message: str):
        self.message = message


def check(call: Callable, names: Iterable[str]):
    """Calls a reader and checks its side of the contract.

    Args:
        call: runs the reader.
        names: the file's path or name, any of which its error message must hold.

    Returns:
        The reader's result, or a ``Refused`` after a UsageError (one line naming
        the file) or an OSError (naming the file); any other exception propagates.
    """
    names = [str(n) for n in names]
    try:
        return call()
    except UsageError as err:
        message = str(err)
        assert message and '\n' not in message and '\r' not in message, repr(message)
        assert any(n in message for n in names), (names, message)
        _note('refused: %s' % message)
        return Refused(message)
    except OSError as err:
        refused = Refused(str(err))
        filename = err.filename
    assert filename is not None and any(n in str(filename) for n in names), refused.message
    return refused


def snapshot(*folders: str) -> Dict[str, Tuple[int, int]]:
    """Every file below ``folders``: path → (size, mtime in ns)."""
    files = {}
    for folder in folders:
        for parent, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(parent, name)
                stat = os.lstat(path)
                files[path] = (stat.st_size, stat.st_mtime_ns)
    return files


def run_tool(
    argv: Sequence[str], env: Optional[Dict[str, str]] = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Runs a Python tool of the repository (``argv[0]`` relative to it) in a subprocess."""
    environment = dict(os.environ, CUDA_VISIBLE_DEVICES='', **(env or {}))
    environment.pop('SESEMI_VERBOSE', None)
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, argv[0])] + list(argv[1:]),
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_refused(proc: subprocess.CompletedProcess, names: Iterable[str]) -> None:
    """Exit code 2 or 1, one 'error:' line naming the file on stderr, no traceback."""
    err = proc.stderr
    assert proc.returncode in (1, 2), (proc.returncode, err[-3000:], proc.stdout[-2000:])
    assert 'Traceback' not in err, err[-3000:]
    assert err.count('\n') == 1 and err.startswith('error: '), err[-3000:]
    assert any(str(n) in err for n in names), (list(names), err)
