"""Files that readers see whole or not at all, and the metrics log.

Every result file is written under a temporary name and renamed into place, so a
kill at any moment leaves the previous version intact.
"""

import json
import os
from typing import List

from sesemi_base.errors import UsageError


def write_atomic(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename, so that
    readers see either the old or the new content, never a partial file."""
    tmp = '%s.tmp%d' % (path, os.getpid())
    try:
        with open(tmp, 'w') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, obj) -> None:
    """Writes ``obj`` as indented JSON with sorted keys, atomically."""
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + '\n')


def read_metrics(path: str) -> List[dict]:
    """The rows of a metrics.jsonl file ([] when there is none).

    Each line is a JSON object with an integer 'step'. A last line without its line
    break (cut short by a kill) is dropped; any other line that is not a row means
    the file is damaged.

    Raises:
        UsageError: a line is not a metrics row.
        OSError: the file cannot be read.
    """
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path, 'rb') as f:
        lines = f.read().split(b'\n')
    for number, line in enumerate(lines, 1):
        if number == len(lines):  # after the last line break: empty, or an incomplete line
            break
        try:
            row = json.loads(line.decode('utf-8'))
        except (ValueError, RecursionError) as err:
            row, why = None, ' '.join(str(err).split())[:100] or type(err).__name__
        else:
            why = 'not an object with an integer step'
        step = row.get('step') if isinstance(row, dict) else None
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise UsageError(
                "'%s' is damaged: line %d is not a metrics row (%s); restore the file the "
                'run wrote, or pass another --result' % (path, number, why)
            )
        rows.append(row)
    return rows


def write_metrics(path: str, rows: List[dict]) -> None:
    """Writes ``rows`` to a metrics.jsonl file, one JSON object per line, atomically."""
    write_atomic(path, ''.join(json.dumps(r, sort_keys=True) + '\n' for r in rows))
