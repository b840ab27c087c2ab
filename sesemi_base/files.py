"""Files that readers see whole or not at all, and the metrics log.

Every result file is written under a temporary name and renamed into place, so a
kill at any moment leaves the previous version intact.
"""

import json
import os
from typing import List


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
    """The rows of a metrics.jsonl file (an incomplete last line is dropped)."""
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    break
    return rows


def write_metrics(path: str, rows: List[dict]) -> None:
    """Writes ``rows`` to a metrics.jsonl file, one JSON object per line, atomically."""
    write_atomic(path, ''.join(json.dumps(r, sort_keys=True) + '\n' for r in rows))
