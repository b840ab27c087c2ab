"""A decode-once cache of image files: uint8 pixels in a memory-mapped file.

For one image size, the cache folder holds two files:
    images-<S>.u8    rows of S×S×3 uint8 pixels, appended as files are decoded;
    images-<S>.json  {"rows": R, "entries": {path: [bytes, mtime_ns, row, gray]},
                      "bad": {path: [bytes, mtime_ns, reason]}}.
A file is looked up by its absolute path, size in bytes and modification time,
so an edited or replaced file is decoded again (its old row stays unused). The
pixel file is extended and synced before the index is replaced atomically, so a
run killed while decoding leaves the previous cache usable; rows past the
index's count are cut off by the next run. An exclusive lock on the index keeps
two runs sharing a cache folder from writing at the same time.
"""

import fcntl
import json
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dataset import images as image_io
from sesemi_base.files import write_atomic

VERSION = 1


class Decoded:
    """The pixels of a list of files, as read through the cache.

    Attributes:
        pixels: uint8 N×S×S×3 of the readable files, in the order asked for.
        gray: bool N, whether each of those files is gray.
        ok: bool per file asked for; False for the unreadable ones.
        bad: (path, reason) of each unreadable file.
        decoded: how many files were decoded now (the rest came from the cache).
        seconds: the time spent decoding them.
    """

    def __init__(self, pixels, gray, ok, bad, decoded, seconds):
        self.pixels, self.gray, self.ok, self.bad = pixels, gray, ok, bad
        self.decoded, self.seconds = decoded, seconds


class Progress:
    """Counts decoded images on stderr: a bar redrawn in place on a terminal, else a
    line every 10 % (of 10,000 images or more) and after 10 seconds without one."""

    def __init__(self, total: int, stream=None):
        self.total, self.done = total, 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = self.last = time.time()
        self.next_line = max(1, total // 10)

    def update(self, count: int = 1) -> None:
        """Counts ``count`` more images done; prints a line at each tenth of the total."""
        self.done += count
        now = time.time()
        if self.tty and (now - self.last > 0.2 or self.done == self.total):
            width = 30
            filled = width * self.done // max(1, self.total)
            self.stream.write(
                '\rdecoding images [%s%s] %d/%d  %.0f images/s'
                % ('=' * filled, '.' * (width - filled), self.done, self.total, self.rate())
            )
            if self.done == self.total:
                self.stream.write('\n')
            self.stream.flush()
            self.last = now
        elif not self.tty and (
            (self.done >= self.next_line and self.total >= 10000) or now - self.last > 10
        ):
            self.stream.write(
                'decoding images: %d/%d  %.0f images/s\n' % (self.done, self.total, self.rate())
            )
            self.stream.flush()
            self.next_line = self.done + max(1, self.total // 10)
            self.last = now

    def rate(self) -> float:
        """Images per second so far."""
        return self.done / max(time.time() - self.start, 1e-9)


def _file_key(path: str) -> Tuple[int, int]:
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def _decode_all(paths: Sequence[str], size: int, report: Callable[[int], None]):
    """Decodes files in memory: (pixels list, gray list, ok list, bad list)."""
    pixels, gray, ok, bad = [], [], [], []
    for path in paths:
        try:
            image, is_gray = image_io.decode_square(path, size)
            pixels.append(image)
            gray.append(is_gray)
            ok.append(True)
        except image_io.DECODE_ERRORS as err:
            ok.append(False)
            bad.append((path, image_io.reason(err)))
        report(1)
    return pixels, gray, ok, bad


def decode(
    paths: Sequence[str], size: int, folder: Optional[str] = None, progress: bool = True
) -> Decoded:
    """Decodes image files to size×size×3 uint8 by the 'crop' rule, through the cache.

    Args:
        paths: the image files, in the order wanted.
        size: the side of the square images.
        folder: the cache folder (created if missing); None decodes in memory only.
        progress: show the decoding progress on stderr.

    Returns:
        A Decoded; its ``pixels`` is an in-memory array, ``gray``, ``ok`` and
        ``bad`` describe the files.

    Raises:
        OSError: the cache folder cannot be created or written.
    """
    paths = [os.path.abspath(p) for p in paths]
    if folder is None:
        todo = paths
        bar = Progress(len(todo)) if progress and todo else None
        start = time.time()
        pixels, gray, ok, bad = _decode_all(todo, size, bar.update if bar else lambda n: None)
        shape = (len(pixels), size, size, 3)
        array = np.stack(pixels) if pixels else np.zeros(shape, np.uint8)
        return Decoded(
            array, np.asarray(gray, bool), np.asarray(ok, bool), bad, len(todo), time.time() - start
        )

    os.makedirs(folder, exist_ok=True)
    index_path = os.path.join(folder, 'images-%d.json' % size)
    pixel_path = os.path.join(folder, 'images-%d.u8' % size)
    row_bytes = size * size * 3
    with open(os.path.join(folder, 'images-%d.lock' % size), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        index = _read_index(index_path, size)
        entries, bad_entries = index['entries'], index['bad']
        keys = [_file_key(p) for p in paths]
        todo = [
            p
            for p, k in zip(paths, keys)
            if _hit(entries.get(p), k) is None and _hit(bad_entries.get(p), k) is None
        ]
        start = time.time()
        if todo:
            bar = Progress(len(todo)) if progress else None
            pixels, gray, ok, bad = _decode_all(todo, size, bar.update if bar else lambda n: None)
            rows = index['rows']
            with open(pixel_path, 'ab') as f:
                f.truncate(rows * row_bytes)  # drop rows a killed run appended after its index
                for image in pixels:
                    f.write(image.tobytes())
                f.flush()
                os.fsync(f.fileno())
            images = iter(zip(range(rows, rows + len(pixels)), gray))
            reasons = dict(bad)
            for path, good in zip(todo, ok):
                key = list(_file_key(path))
                if good:
                    row, is_gray = next(images)
                    entries[path] = key + [row, int(is_gray)]
                    bad_entries.pop(path, None)
                else:
                    bad_entries[path] = key + [reasons[path]]
                    entries.pop(path, None)
            index['rows'] = rows + len(pixels)
            write_atomic(index_path, json.dumps(index, separators=(',', ':')))
        seconds = time.time() - start

    ok = np.array([p in entries for p in paths], bool)
    rows = np.array([entries[p][2] for p in paths if p in entries], np.int64)
    gray = np.array([bool(entries[p][3]) for p in paths if p in entries], bool)
    bad = [(p, bad_entries[p][2]) for p in paths if p not in entries]
    if index['rows']:
        store = np.memmap(pixel_path, np.uint8, 'r', shape=(index['rows'], size, size, 3))
        pixels = _gather(store, rows)
        del store
    else:
        pixels = np.zeros((0, size, size, 3), np.uint8)
    return Decoded(pixels, gray, ok, bad, len(todo), seconds)


def _gather(store: np.ndarray, rows: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """store[rows] in chunks of sorted rows, so the memory map is read mostly in order."""
    out = np.empty((len(rows),) + store.shape[1:], np.uint8)
    for begin in range(0, len(rows), chunk):
        part = rows[begin : begin + chunk]
        order = np.argsort(part, kind='stable')
        out[begin + order] = store[part[order]]
    return out


def _hit(entry: Optional[list], key: Tuple[int, int]) -> Optional[list]:
    """The cache entry if it matches the file's (size, mtime), else None."""
    return entry if entry is not None and tuple(entry[:2]) == tuple(key) else None


def _read_index(path: str, size: int) -> Dict:
    """The cache index, or an empty one when missing, unreadable or damaged (its files
    are then decoded afresh) or when the pixel file holds fewer rows than it counts."""
    empty = {'version': VERSION, 'size': size, 'rows': 0, 'entries': {}, 'bad': {}}
    try:
        with open(path) as f:
            index = json.load(f)
    except (OSError, ValueError, RecursionError):
        return empty
    if not _valid_index(index, size):
        return empty
    pixel_path = os.path.join(os.path.dirname(path), 'images-%d.u8' % size)
    try:
        stored = os.path.getsize(pixel_path) if os.path.isfile(pixel_path) else 0
    except OSError:
        return empty
    return index if stored >= index['rows'] * size * size * 3 else empty


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _valid_index(index, size: int) -> bool:
    """Whether ``index`` is an index as ``decode`` writes it (see the module docstring)."""
    if not (
        isinstance(index, dict)
        and index.get('version') == VERSION
        and index.get('size') == size
        and _integer(index.get('rows'))
        and index['rows'] >= 0
        and isinstance(index.get('entries'), dict)
        and isinstance(index.get('bad'), dict)
    ):
        return False
    for entry in index['entries'].values():
        if not (
            isinstance(entry, list)
            and len(entry) == 4
            and all(_integer(v) for v in entry)
            and 0 <= entry[2] < index['rows']
            and entry[3] in (0, 1)
        ):
            return False
    return all(
        isinstance(entry, list)
        and len(entry) == 3
        and _integer(entry[0])
        and _integer(entry[1])
        and isinstance(entry[2], str)
        for entry in index['bad'].values()
    )


def cached_paths(folder: str, size: int) -> List[str]:
    """The files the cache holds pixels of (for tests and inspection)."""
    return sorted(_read_index(os.path.join(folder, 'images-%d.json' % size), size)['entries'])
