"""Fuzzing image folders: damaged PNG, JPEG, BMP and GIF files (a bad file is skipped and
listed, more than 1 % stops the run), decompression bombs, and the decode cache's pixel
file and index, plus a sample of damaged folders given to the training entry."""

import io
import json
import os
import struct
import tempfile
import zlib

import numpy as np
import pytest
from fuzzing import (
    IS_ROOT,
    ROOT_SKIP_REASON,
    STRICT,
    SUBPROCESS_CASES,
    Refused,
    assert_refused,
    budget,
    check,
    damaged_bytes,
    damaged_json,
    json_text,
    make_folder,
    run_tool,
    snapshot,
    write,
)
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from dataset import folder, folder_images, image_cache, images

pytestmark = STRICT

SIZE = 8
FORMATS = {'png': 'PNG', 'jpg': 'JPEG', 'bmp': 'BMP', 'gif': 'GIF'}


def image_bytes(ext, seed=0, size=SIZE, mode='RGB'):
    rng = np.random.RandomState(seed)
    img = Image.fromarray(rng.randint(0, 256, (size, size, 3)).astype(np.uint8)).convert(mode)
    out = io.BytesIO()
    img.save(out, FORMATS[ext])
    return out.getvalue()


TEMPLATES = {ext: image_bytes(ext) for ext in FORMATS}


def valid_square(result, size=SIZE):
    pixels, gray = result
    assert pixels.dtype == np.uint8 and pixels.shape == (size, size, 3), pixels.shape
    assert isinstance(gray, bool)
    if gray:
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def decode_one(path):
    """An image file through the decoder: its square, or a Refused with one line."""
    try:
        return images.decode_square(path, SIZE)
    except images.DECODE_ERRORS as err:
        reason = images.reason(err)
        assert reason and '\n' not in reason, reason
        return Refused(reason)


@pytest.mark.parametrize('ext', sorted(FORMATS))
@budget(50)
@given(data=st.data())
def test_fuzz_image_file(ext, data):
    raw = data.draw(damaged_bytes(TEMPLATES[ext], head=64), 'damage')
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'image.' + ext)
        write(path, raw)
        result = decode_one(path)
    if not isinstance(result, Refused):
        valid_square(result)


# ----------------------------------------------------------- decompression bombs


def png_chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))


def bomb_png(width, height):
    """A 1-bit PNG whose header declares width×height pixels (the data is one row)."""
    header = struct.pack('>IIBBBBB', width, height, 1, 0, 0, 0, 0)
    rows = zlib.compress(b'\0' * (1 + (width + 7) // 8))
    return (
        b'\x89PNG\r\n\x1a\n'
        + png_chunk(b'IHDR', header)
        + png_chunk(b'IDAT', rows)
        + png_chunk(b'IEND', b'')
    )


@budget(25)
@given(
    side=st.integers(Image.MAX_IMAGE_PIXELS // 20000 + 1, 2**31 - 1),
    ratio=st.sampled_from([20000, 10000, 1]),
)
def test_fuzz_decompression_bomb_is_a_bad_file(side, ratio):
    width, height = side, max(1, min(2**31 - 1, ratio))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'bomb.png')
        write(path, bomb_png(width, height))
        result = decode_one(path)
    if width * height > Image.MAX_IMAGE_PIXELS:
        assert isinstance(result, Refused), (width, height)


# ---------------------------------------------------------------- image folders

PER_CLASS = 55  # 110 labeled images: one bad file is below 1 %, two are above


def write_folder(root, exts=('png', 'jpg', 'bmp', 'gif')):
    """Two classes of small images of every format; returns the relative paths."""
    paths = []
    for label, name in enumerate(['a', 'b']):
        os.makedirs(os.path.join(root, 'labeled', name))
        for i in range(PER_CLASS):
            ext = exts[i % len(exts)]
            path = os.path.join('labeled', name, 'img%02d.%s' % (i, ext))
            write(os.path.join(root, path), image_bytes(ext, seed=label * 100 + i))
            paths.append(path)
    return paths


def load_folder(root, cache=None):
    layout = folder.scan(root, 0.1)
    return folder_images.load(layout, SIZE, cache, progress=False)


def valid_loaded(loaded, n_files, bad):
    assert loaded.channels in (1, 3)
    assert loaded.x_train.dtype == np.uint8 and loaded.x_train.shape[1:] == (
        SIZE,
        SIZE,
        loaded.channels,
    )
    assert loaded.x_test.dtype == np.float32 and loaded.x_test.shape[1:] == (
        SIZE,
        SIZE,
        loaded.channels,
    )
    assert len(loaded.y_train) == len(loaded.x_train) and len(loaded.y_test) == len(loaded.x_test)
    assert set(loaded.y_train.tolist()) == {0, 1} and set(loaded.y_test.tolist()) <= {0, 1}
    assert len(loaded.x_train) + len(loaded.x_test) + len(loaded.skipped) == n_files
    for line in loaded.skipped:
        assert '\n' not in line
    assert [line.split(': ')[0] for line in loaded.skipped] == list(bad)


@budget(30)
@given(data=st.data())
def test_fuzz_image_folder(data):
    """One or two damaged files among 110: skipped and listed, or the run stops (> 1 %)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, 'root')
        paths = write_folder(root)
        chosen = data.draw(
            st.lists(st.sampled_from(paths), min_size=1, max_size=2, unique=True), 'files'
        )
        for path in chosen:
            ext = path.rsplit('.', 1)[1]
            write(os.path.join(root, path), data.draw(damaged_bytes(TEMPLATES[ext]), 'damage'))
        bad = [p for p in paths if isinstance(decode_one(os.path.join(root, p)), Refused)]
        result = check(lambda: load_folder(root), [root])
        if isinstance(result, Refused):
            assert len(bad) > 0.01 * len(paths)
        else:
            assert len(bad) <= 0.01 * len(paths)
            valid_loaded(result, len(paths), bad)


# ------------------------------------------------------------------ decode cache


def cache_files(cache):
    return (
        os.path.join(cache, 'images-%d.json' % SIZE),
        os.path.join(cache, 'images-%d.u8' % SIZE),
    )


def expected_decode(paths):
    return image_cache.decode(paths, SIZE, None, progress=False)


def check_cache(paths, cache, fresh):
    """Decodes through a (damaged) cache: valid arrays for every file, or one line."""
    index_path, pixel_path = cache_files(cache)
    result = check(lambda: image_cache.decode(paths, SIZE, cache, progress=False), [cache])
    if isinstance(result, Refused):
        return
    assert result.pixels.dtype == np.uint8 and result.pixels.shape == fresh.pixels.shape
    assert result.ok.tolist() == fresh.ok.tolist() and len(result.gray) == len(result.pixels)
    # A second read comes from what the first one wrote: the same pixels.
    again = image_cache.decode(paths, SIZE, cache, progress=False)
    assert again.decoded == 0 and (again.pixels == result.pixels).all()
    with open(index_path) as f:
        json.load(f)


def cached_folder(tmp, count=6):
    """Image files and a cache folder that holds all of them."""
    paths = []
    for i in range(count):
        path = os.path.join(tmp, 'img%d.%s' % (i, sorted(FORMATS)[i % 4]))
        write(path, image_bytes(sorted(FORMATS)[i % 4], seed=i))
        paths.append(path)
    cache = os.path.join(tmp, 'cache')
    image_cache.decode(paths, SIZE, cache, progress=False)
    return paths, cache


@budget(40)
@given(data=st.data())
def test_fuzz_cache_index(data):
    with tempfile.TemporaryDirectory() as tmp:
        paths, cache = cached_folder(tmp)
        fresh = expected_decode(paths)
        index_path, _ = cache_files(cache)
        with open(index_path, 'rb') as f:
            raw = f.read()
        if data.draw(st.booleans(), 'structured'):
            damaged = json_text(data.draw(damaged_json(json.loads(raw.decode())))).encode()
        else:
            damaged = data.draw(damaged_bytes(raw, head=64))
        write(index_path, damaged)
        result_before = check(
            lambda: image_cache.decode(paths, SIZE, cache, progress=False), [cache]
        )
        if not isinstance(result_before, Refused):
            # Pixels of a file come from its own row: equal to a fresh decode, or (when
            # the damage moved a row number) the pixels of another file of the cache.
            rows = {fresh.pixels[k].tobytes() for k in range(len(fresh.pixels))}
            for k in range(len(result_before.pixels)):
                assert result_before.pixels[k].tobytes() in rows
        check_cache(paths, cache, fresh)


@budget(30)
@given(data=st.data())
def test_fuzz_cache_pixels(data):
    with tempfile.TemporaryDirectory() as tmp:
        paths, cache = cached_folder(tmp)
        fresh = expected_decode(paths)
        _, pixel_path = cache_files(cache)
        with open(pixel_path, 'rb') as f:
            raw = f.read()
        write(pixel_path, data.draw(damaged_bytes(raw, head=4 * SIZE * SIZE * 3)))
        check_cache(paths, cache, fresh)


@pytest.mark.parametrize('which', [0, 1])
def test_a_folder_in_place_of_a_cache_file(tmp_path, which):
    paths, cache = cached_folder(str(tmp_path))
    make_folder(cache_files(cache)[which])
    check_cache(paths, cache, expected_decode(paths))


@pytest.mark.skipif(IS_ROOT, reason=ROOT_SKIP_REASON)
def test_an_unreadable_cache_index_is_decoded_afresh_or_refused(tmp_path):
    paths, cache = cached_folder(str(tmp_path))
    os.chmod(cache_files(cache)[0], 0)
    check_cache(paths, cache, expected_decode(paths))


@pytest.mark.skipif(IS_ROOT, reason=ROOT_SKIP_REASON)
def test_an_unreadable_image_is_skipped_and_listed(tmp_path):
    root = str(tmp_path / 'root')
    paths = write_folder(root)
    os.chmod(os.path.join(root, paths[3]), 0)
    loaded = load_folder(root)
    assert [line.split(': ')[0] for line in loaded.skipped] == [paths[3]]


# --------------------------------------------------------------- the training entry

ENTRY_CASES = [
    # Two damaged files of 110 (more than 1 %): the run stops, naming one.
    ('two bad', lambda raw: raw[: len(raw) // 3]),
    ('two bombs', lambda raw: bomb_png(30000, 30000)),
    ('two flipped', lambda raw: raw[:8] + bytes(b ^ 0xFF for b in raw[8:40]) + raw[40:]),
]


@pytest.mark.parametrize('case', range(SUBPROCESS_CASES))
def test_training_entry_stops_on_too_many_bad_images(tmp_path, case):
    _, damage = ENTRY_CASES[case]
    root, result = str(tmp_path / 'root'), str(tmp_path / 'result')
    paths = write_folder(root, exts=('png',))
    for path in paths[:2]:
        with open(os.path.join(root, path), 'rb') as f:
            write(os.path.join(root, path), damage(f.read()))
    os.makedirs(result)
    with open(os.path.join(result, 'metrics.jsonl'), 'w') as f:
        f.write('{"step": 5}\n')
    before = snapshot(root, result)
    proc = run_tool(
        [
            'train_evaluate_asl2.py',
            '--data=folder',
            '--dataset=' + root,
            '--image_size=%d' % SIZE,
            '--result=' + result,
            '--cache=' + str(tmp_path / 'cache'),
            '--resume',
        ]
    )
    assert_refused(proc, [root])
    assert snapshot(root, result) == before
    assert not os.path.exists(str(tmp_path / 'cache'))  # the cache this run made is removed
