"""Training on your own images (--data=folder): decoding rules, the decode cache, the
folder layout and split, bad input, and end-to-end runs with the model-file tools."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, expect_usage_error, write_image_folder
from PIL import Image

import dataset
from dataset import folder, image_cache, images
from dataset.common import to_unit_float
from sesemi_base.errors import UsageError
from sesemi_tf import pipeline

TINY = [
    '--network=convnet',
    '--width=0.0625',
    '--batch_size=2',
    '--image_size=16',
    '--max_steps=4',
    '--epochs=1',
]


def usage_error(fn, *words):
    with pytest.raises(UsageError) as err:
        fn()
    message = str(err.value)
    assert '\n' not in message
    for word in words:
        assert word in message, message
    return message


# ------------------------------------------------------------ decoding rules


def test_crop_rule_resizes_the_shorter_side_then_takes_the_centre(tmp_path):
    # 40×20: columns 0-5 black, 6-33 white, 34-39 black; the 20-high image becomes 16×8
    # then the centre 8×8, all of it from the white middle.
    pixels = np.zeros((20, 40), np.uint8)
    pixels[:, 6:34] = 255
    path = str(tmp_path / 'wide.png')
    Image.fromarray(pixels).save(path)
    crop = images.read_pixels(path, (8, 8, 1), 'crop')
    assert crop.shape == (8, 8, 1) and crop.min() >= 250
    stretch = images.read_pixels(path, (8, 8, 1), 'stretch')
    assert stretch[:, 0].max() < 50 and stretch[:, -1].max() < 50  # the black sides are kept
    tall = images.fit(Image.new('L', (10, 30)), (8, 8), 'crop')
    assert tall.size == (8, 8)


def test_alpha_is_composited_on_black_and_gray_is_detected(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200  # red everywhere
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # transparent red reads as black
    rgba[0, 1, 3] = 128  # half transparent: half the red
    Image.fromarray(rgba, 'RGBA').save(str(tmp_path / 'a.png'))
    pixels, gray = images.decode_square(str(tmp_path / 'a.png'), 4)
    assert not gray and pixels[0, 0].tolist() == [0, 0, 0] and pixels[1, 1].tolist() == [200, 0, 0]
    assert abs(int(pixels[0, 1, 0]) - 100) <= 1
    Image.new('LA', (4, 4), (90, 255)).save(str(tmp_path / 'la.png'))
    Image.new('L', (4, 4), 90).convert('P').save(str(tmp_path / 'p.gif'))
    Image.new('RGB', (4, 4), (90, 90, 90)).save(str(tmp_path / 'c.bmp'))
    assert images.decode_square(str(tmp_path / 'la.png'), 4)[1]
    gif, gif_gray = images.decode_square(str(tmp_path / 'p.gif'), 4)
    assert gif_gray and (gif == 90).all()
    assert not images.decode_square(str(tmp_path / 'c.bmp'), 4)[1]  # RGB file: colour
    assert images.read_pixels(str(tmp_path / 'la.png'), (4, 4, 3), 'crop').shape == (4, 4, 3)


def test_first_frame_of_an_animated_gif(tmp_path):
    frames = [Image.new('L', (4, 4), v).convert('P') for v in (30, 220)]
    frames[0].save(str(tmp_path / 'anim.gif'), save_all=True, append_images=frames[1:])
    pixels, _ = images.decode_square(str(tmp_path / 'anim.gif'), 4)
    assert (pixels == 30).all()


def test_corrupt_and_foreign_files_raise_decode_errors(tmp_path):
    (tmp_path / 'bad.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 30)
    (tmp_path / 'text.jpg').write_text('hello')
    good = np.full((32, 32, 3), 128, np.uint8)
    Image.fromarray(good).save(str(tmp_path / 'cut.png'))
    data = (tmp_path / 'cut.png').read_bytes()
    (tmp_path / 'cut.png').write_bytes(data[: len(data) // 2])
    for name in ('bad.png', 'text.jpg', 'cut.png'):
        with pytest.raises(images.DECODE_ERRORS):
            images.decode_square(str(tmp_path / name), 8)


# ------------------------------------------------------------ decode cache


def _png(path, value, size=8):
    Image.new('RGB', (size, size), (value, value, value)).save(str(path))


def test_cache_decodes_once_and_notices_edits(tmp_path):
    paths = [tmp_path / ('%d.png' % i) for i in range(4)]
    for i, p in enumerate(paths):
        _png(p, 10 * i)
    (tmp_path / 'bad.png').write_bytes(b'junk')
    names = [str(p) for p in paths] + [str(tmp_path / 'bad.png')]
    cache = str(tmp_path / 'cache')
    first = image_cache.decode(names, 8, cache, progress=False)
    assert first.decoded == 5 and first.ok.tolist() == [True] * 4 + [False]
    assert [p[0, 0, 0] for p in first.pixels] == [0, 10, 20, 30]
    assert first.gray.all() is np.bool_(False) or not first.gray.any()  # RGB files: colour
    again = image_cache.decode(names, 8, cache, progress=False)
    assert again.decoded == 0 and np.array_equal(again.pixels, first.pixels)
    assert again.bad == first.bad and 'bad.png' in again.bad[0][0]
    # An edit (new content, new modification time) is decoded again, the rest is not.
    _png(paths[2], 99)
    os.utime(str(paths[2]), ns=(time.time_ns() + 10**9,) * 2)
    edited = image_cache.decode(names, 8, cache, progress=False)
    assert edited.decoded == 1 and [p[0, 0, 0] for p in edited.pixels] == [0, 10, 99, 30]
    # Order follows the request; the in-memory path gives the same pixels.
    order = image_cache.decode(names[::-1], 8, cache, progress=False)
    assert order.decoded == 0 and [p[0, 0, 0] for p in order.pixels] == [30, 99, 10, 0]
    memory = image_cache.decode(names, 8, None, progress=False)
    assert np.array_equal(memory.pixels, edited.pixels) and memory.ok.tolist() == edited.ok.tolist()


def test_decoding_progress_is_a_bar_on_a_terminal_and_lines_otherwise():
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    lines = io.StringIO()
    progress = image_cache.Progress(20000, stream=lines)
    for _ in range(20000):
        progress.update()
    assert lines.getvalue().count('\n') == 10 and 'decoding images: 20000/20000' in lines.getvalue()
    small = io.StringIO()
    for _ in range(50):  # a small set: no lines, the summary after decoding suffices
        image_cache.Progress(50, stream=small).update()
    assert small.getvalue() == ''
    terminal = Terminal()
    progress = image_cache.Progress(3, stream=terminal)
    for _ in range(3):
        progress.update()
    text = terminal.getvalue()
    assert text.startswith('\rdecoding images [') and '3/3' in text and text.endswith('\n')


def test_cache_survives_rows_left_by_a_killed_run(tmp_path):
    paths = [tmp_path / ('%d.png' % i) for i in range(2)]
    for i, p in enumerate(paths):
        _png(p, 50 + i)
    cache = str(tmp_path / 'cache')
    image_cache.decode([str(paths[0])], 8, cache, progress=False)
    with open(os.path.join(cache, 'images-8.u8'), 'ab') as f:
        f.write(b'\xff' * 8 * 8 * 3 * 3)  # appended, never indexed
    both = image_cache.decode([str(p) for p in paths], 8, cache, progress=False)
    assert both.decoded == 1 and [p[0, 0, 0] for p in both.pixels] == [50, 51]
    assert os.path.getsize(os.path.join(cache, 'images-8.u8')) == 2 * 8 * 8 * 3


def _cached_pngs(tmp_path, count=3):
    paths = [str(tmp_path / ('%d.png' % i)) for i in range(count)]
    for i, p in enumerate(paths):
        _png(p, 50 + i)
    cache = str(tmp_path / 'cache')
    image_cache.decode(paths, 8, cache, progress=False)
    return paths, cache


@pytest.mark.parametrize(
    'index',
    [
        'null',  # AttributeError
        '{"version": 1, "size": 8, "rows": 3, "bad": {}}',  # KeyError: 'entries'
        '{"version": 1, "size": 8, "entries": {}, "bad": {}}',  # KeyError: 'rows'
        '{"version": 1, "size": 8, "rows": "3", "entries": {}, "bad": {}}',  # TypeError
        '{"version": 1, "size": 8, "rows": 3, "entries": [], "bad": {}}',  # AttributeError
    ],
)
def test_cache_with_a_damaged_index_decodes_afresh(tmp_path, index):
    # Found by fuzzing: an index that parsed but was not the cache's ended in a traceback.
    paths, cache = _cached_pngs(tmp_path)
    with open(os.path.join(cache, 'images-8.json'), 'w') as f:
        f.write(index)
    decoded = image_cache.decode(paths, 8, cache, progress=False)
    assert decoded.decoded == 3 and [p[0, 0, 0] for p in decoded.pixels] == [50, 51, 52]


def test_cache_with_a_row_outside_its_pixel_file_decodes_afresh(tmp_path):
    # Found by fuzzing: a pixel file shorter than its index counts (here emptied) made the
    # memory map raise ValueError, and a row number past the count read outside it.
    paths, cache = _cached_pngs(tmp_path)
    open(os.path.join(cache, 'images-8.u8'), 'w').close()
    decoded = image_cache.decode(paths, 8, cache, progress=False)
    assert decoded.decoded == 3 and [p[0, 0, 0] for p in decoded.pixels] == [50, 51, 52]
    with open(os.path.join(cache, 'images-8.json')) as f:
        index = json.load(f)
    index['entries'][os.path.abspath(paths[1])][2] = 7
    with open(os.path.join(cache, 'images-8.json'), 'w') as f:
        json.dump(index, f)
    decoded = image_cache.decode(paths, 8, cache, progress=False)
    assert decoded.decoded == 3 and [p[0, 0, 0] for p in decoded.pixels] == [50, 51, 52]


def test_image_above_the_pixel_limit_is_a_bad_file_and_not_decoded(tmp_path):
    # Found by fuzzing: Pillow only warns for 1 to 2 times Image.MAX_IMAGE_PIXELS and
    # decoded such a bomb (here 89.5 million pixels from a file of 100 bytes).
    import struct
    import zlib

    def chunk(kind, data):
        return (
            struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
        )

    width, height = 4474, 20000
    assert width * height > Image.MAX_IMAGE_PIXELS
    raw = (
        b'\x89PNG\r\n\x1a\n'
        + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 1, 0, 0, 0, 0))
        + chunk(b'IDAT', zlib.compress(b'\0' * (1 + width // 8)))
        + chunk(b'IEND', b'')
    )
    path = str(tmp_path / 'bomb.png')
    with open(path, 'wb') as f:
        f.write(raw)
    limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(images.DECODE_ERRORS) as info:
        images.decode_square(path, 8)
    assert 'decompression bomb' in images.reason(info.value)
    assert limit == Image.MAX_IMAGE_PIXELS  # Pillow's limit is kept


# ------------------------------------------------------------ input pipeline


def test_pipeline_converts_uint8_images_as_the_float_path_does():
    from conftest import class_images, take

    from sesemi_tf import model_io

    labels = np.arange(12) % 2
    raw = class_images(labels, size=8, channels=3)
    prep = model_io.Preprocessing('folder', 2, (8, 8, 3), ('a', 'b'), True, 0, resize='crop')
    one_hot = np.eye(2, dtype=np.float32)[labels]
    sampler = pipeline.BatchSampler(np.arange(6), np.arange(12), 4, 2, seed=0)
    floats = take(
        pipeline.make_dataset(prep.apply(to_unit_float(raw)), one_hot, sampler, 3, True), 2
    )
    converted = take(
        pipeline.make_dataset(raw, one_hot, sampler, 3, True, convert=prep.apply_tf), 2
    )
    for (inputs, targets), (inputs2, targets2) in zip(floats, converted):
        assert sorted(inputs) == sorted(inputs2) == ['self_data', 'super_data']
        for key in inputs:
            np.testing.assert_allclose(inputs2[key], inputs[key], atol=2e-4)
            np.testing.assert_array_equal(
                targets2[key.replace('data', 'clf')], targets[key.replace('data', 'clf')]
            )


# ------------------------------------------------------------ layout and split


@pytest.fixture
def image_root(tmp_path):
    root = str(tmp_path / 'photos')
    write_image_folder(root)
    return root


def test_scan_classes_split_and_ignored_files(image_root):
    layout = folder.scan(image_root, 0.1)
    assert layout.class_names == ('a', 'b') and layout.held_out
    # 30 + 31 image files (b has the corrupt PNG); round(0.1 × n) of each class held out.
    assert len(layout.test) == 3 + 3 and len(layout.train) == 27 + 28
    assert [c for _, c in layout.test] == [0, 0, 0, 1, 1, 1]
    assert layout.ignored == 1 and len(layout.unlabeled) == 50
    assert any(p.startswith(os.path.join('unlabeled', 'part1', 'deeper')) for p in layout.unlabeled)
    assert not set(layout.train) & set(layout.test)
    assert folder.scan(image_root, 0.1) == layout  # the split's seed is fixed
    assert folder.scan(image_root, 0.2).test != layout.test


def test_hold_out_is_stratified_with_seed_1():
    files = [('f%d' % i, i % 3) for i in range(30)]
    train, test = folder.hold_out(files, 3, 0.2, ['x', 'y', 'z'])
    assert sorted(c for _, c in test) == [0, 0, 1, 1, 2, 2] and len(train) == 24
    rng = np.random.RandomState(1)
    expected = []
    for label in range(3):
        members = np.array([i for i in range(30) if i % 3 == label])
        rng.shuffle(members)
        expected.extend(members[:2].tolist())
    assert sorted(test) == sorted(files[i] for i in expected)
    usage_error(
        lambda: folder.hold_out([('a', 0), ('b', 1), ('c', 1)], 2, 0.1, ['x', 'y']),
        "class 'x'",
        'test/',
    )


def test_describe_and_load_run(image_root, tmp_path):
    info = dataset.describe(
        'folder', image_root, {'image_size': 12, 'test_fraction': 0.1, 'zca': None, 'hflip': False}
    )
    assert info.class_names == ('a', 'b') and info.n_classes == 2 and info.shape == (12, 12, None)
    assert not info.zca and not info.hflip and info.resize == 'crop' and info.default_labels is None
    assert info.sesemi_epochs == 30  # 105 pool images: the cap
    assert folder.sesemi_epochs(200000) == 8 and folder.sesemi_epochs(10**7) == 1
    assert not dataset.describe('folder', image_root, {'mode': 'asl'}).layout.unlabeled
    data = dataset.load_run(info, None, str(tmp_path / 'cache'), progress=False)
    assert data.info.shape == (12, 12, 3)  # colour files present: 3 channels
    (x, y), (xt, yt) = data.train, data.test
    assert x.dtype == np.uint8 and x.shape == (27 + 27 + 50, 12, 12, 3) and len(y) == 54
    assert (
        xt.dtype == np.float32 and xt.shape == (6, 12, 12, 3) and yt.tolist() == [0] * 3 + [1] * 3
    )
    assert data.skipped == [
        os.path.join('labeled', 'b', 'broken.png') + ': ' + data.skipped[0].split(': ', 1)[1]
    ]
    split = data.split
    assert split['class_names'] == ['a', 'b'] and split['test_source'] == 'held_out'
    assert len(split['train_files']) == 54 and split['unlabeled_images'] == 50
    assert os.path.join('labeled', 'b', 'broken.png') not in split['train_files']
    # The evaluation tools decode the held-out files to the same pixels.
    x2, y2 = dataset.load_test('folder', None, split, (12, 12, 3), ('a', 'b'))
    np.testing.assert_array_equal(x2, xt)
    assert y2.tolist() == yt.tolist()


def test_gray_folder_has_one_channel(tmp_path):
    root = tmp_path / 'g'
    for name in ('x', 'y'):
        (root / 'labeled' / name).mkdir(parents=True)
        for i in range(3):
            Image.new('L', (9, 11), 40 * i).save(str(root / 'labeled' / name / ('%d.png' % i)))
    info = dataset.describe('folder', str(root), {'image_size': 8, 'test_fraction': 0.3})
    data = dataset.load_run(info, None, None, progress=False)
    assert data.info.shape == (8, 8, 1) and data.train[0].shape[1:] == (8, 8, 1)


def test_test_folder_replaces_the_held_out_split(tmp_path):
    root = str(tmp_path / 't')
    write_image_folder(root, per_class=10, unlabeled=0, test_folder=True)
    layout = folder.scan(root, 0.1)
    assert not layout.held_out and len(layout.test) == 6 and len(layout.train) == 21


def test_too_many_corrupt_files_stop_and_leave_no_cache(tmp_path):
    root = str(tmp_path / 'r')
    write_image_folder(root, per_class=10, unlabeled=0)  # 1 bad of 21: more than 1 %
    cache = str(tmp_path / 'result' / 'cache')
    info = dataset.describe('folder', root, {'image_size': 8})
    usage_error(
        lambda: dataset.load_run(info, None, cache, progress=False),
        '1 of the 21 image files',
        'broken.png',
        'replace or remove',
    )
    assert not os.path.exists(str(tmp_path / 'result'))


# ------------------------------------------------------------ bad input (entry)


def _layout_errors(tmp_path):
    """(root, expected words) of every layout the entry must refuse."""
    cases = [(str(tmp_path / 'missing'), ['missing', 'does not exist'])]
    no_labeled = tmp_path / 'nolabeled'
    no_labeled.mkdir()
    cases.append((str(no_labeled), ['no labeled/ folder']))
    one = tmp_path / 'one'
    (one / 'labeled' / 'only').mkdir(parents=True)
    _png(one / 'labeled' / 'only' / 'x.png', 1)
    cases.append((str(one), ['1 class folder', 'at least 2']))
    empty = tmp_path / 'empty'
    for name in ('a', 'b'):
        (empty / 'labeled' / name).mkdir(parents=True)
    _png(empty / 'labeled' / 'a' / 'x.png', 1)
    (empty / 'labeled' / 'b' / 'readme.txt').write_text('no images here')
    cases.append((str(empty), [os.path.join('labeled', 'b'), 'holds no image files']))
    mismatch = tmp_path / 'mismatch'
    for part, names in (('labeled', ('a', 'b')), ('test', ('a', 'c'))):
        for name in names:
            (mismatch / part / name).mkdir(parents=True)
            _png(mismatch / part / name / 'x.png', 1)
    cases.append((str(mismatch), [os.path.join('mismatch', 'test'), "'c'", 'same class folders']))
    return cases


def test_bad_layouts_are_one_line_errors_and_write_nothing(capsys, tmp_path):
    result = str(tmp_path / 'result')
    for root, words in _layout_errors(tmp_path):
        expect_usage_error(
            capsys, ['--data=folder', '--dataset=' + root, '--result=' + result] + TINY, *words
        )
        assert not os.path.exists(result)


def test_bad_flags_for_folder_data(capsys, image_root, tmp_path):
    result = str(tmp_path / 'result')
    base = ['--data=folder', '--dataset=' + image_root, '--result=' + result]
    expect_usage_error(capsys, base + ['--image_size=4'], '--image_size=4', '8 or more')
    expect_usage_error(capsys, base + ['--test_fraction=1.5'], '--test_fraction=1.5')
    expect_usage_error(capsys, base + ['--labels=3'], '--labels=3', 'multiple of the 2 classes')
    for i in range(3):  # class b: 34 files, 31 for training; class a: 27
        _png(os.path.join(image_root, 'labeled', 'b', 'extra%d.png' % i), i)
    expect_usage_error(capsys, base + ['--labels=56'], 'class 0 has only 27', 'lower --labels')
    expect_usage_error(capsys, ['--data=folder', '--result=' + result], '--dataset=ROOT')
    assert not os.path.exists(result)


def test_tf1_refuses_a_training_set_over_its_graph_limit(capsys, monkeypatch, image_root, tmp_path):
    import train_evaluate_asl2 as entry
    from sesemi_base.compat import TF1
    from sesemi_tf import pipeline

    monkeypatch.setattr(pipeline, 'GRAPH_CONSTANT_LIMIT', 1000)  # bytes: the tiny set is larger
    os.remove(os.path.join(image_root, 'labeled', 'b', 'broken.png'))  # no warning line
    argv = ['--data=folder', '--dataset=' + image_root, '--mode=sesemi', '--dry_run'] + TINY
    if TF1:
        expect_usage_error(capsys, argv, 'TensorFlow 1.15', 'TensorFlow 2')
    else:  # TF 2 holds the images outside any GraphDef
        assert entry.main(['train_evaluate_asl2.py'] + argv) == 0


# ------------------------------------------------------------ end to end


def run_tool(script, args):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='')
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, script)] + list(args),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """The three modes trained a few steps on one image folder, side by side."""
    base = tmp_path_factory.mktemp('folder_runs')
    root = str(base / 'photos')
    write_image_folder(root, per_class=55)  # 111 labeled files: 1 corrupt is below 1 %
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='')
    procs = {
        mode: subprocess.Popen(
            [
                sys.executable,
                os.path.join(ROOT, 'train_evaluate_asl2.py'),
                '--data=folder',
                '--dataset=' + root,
                '--mode=' + mode,
                '--result=' + str(base / mode),
            ]
            + TINY,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,
        )
        for mode in ('sesemi', 'asl', 'supervised')
    }
    outputs = {}
    for mode, proc in procs.items():
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        outputs[mode] = (out, err)
    return root, base, outputs


@pytest.mark.slow
def test_each_mode_trains_and_leaves_split_and_skip_list(trained):
    root, base, outputs = trained
    for mode, (out, err) in outputs.items():
        result = str(base / mode)
        decoded = 161 if mode == 'sesemi' else 111  # unlabeled/ is read for sesemi only
        assert 'Decoded %d images' % decoded in out and 'Final test error' in out
        assert err.count('warning: 1 of the image files cannot be decoded') == 1
        with open(os.path.join(result, 'skipped_images.txt')) as f:
            skipped = f.read().splitlines()
        assert len(skipped) == 1 and skipped[0].startswith(
            os.path.join('labeled', 'b', 'broken.png')
        )
        with open(os.path.join(result, 'split.json')) as f:
            split = json.load(f)
        assert split['class_names'] == ['a', 'b'] and split['root'] == os.path.abspath(root)
        assert len(split['labeled_indices']) == 98 and len(split['test_files']) == 12
        with open(os.path.join(result, 'args.json')) as f:
            args = json.load(f)
        assert args['labels'] is None and args['hflip'] and not args['zca']
        assert args['cache'] == os.path.join(result, 'cache')
        with open(os.path.join(result, 'metrics.jsonl')) as f:
            rows = [json.loads(line) for line in f]
        assert rows[-1]['step'] == 4 and (rows[-1]['self_loss'] is None) == (mode == 'supervised')
        assert len(image_cache.cached_paths(args['cache'], 16)) == decoded - 1


@pytest.mark.slow
def test_model_tools_work_on_a_folder_model(trained, tmp_path):
    from sesemi_base.compat import K
    from sesemi_tf import model_io

    root, base, _ = trained
    result = str(base / 'sesemi')
    model_path = os.path.join(result, 'model.h5')
    prep = model_io.read_preprocessing(model_path)
    assert prep.data == 'folder' and prep.class_names == ('a', 'b')
    assert prep.input_shape == (16, 16, 3) and prep.resize == 'crop' and prep.zca is None
    with open(os.path.join(result, 'split.json')) as f:
        split = json.load(f)
    # predict.py on held-out files gives the class the loaded model gives the loader's pixels.
    x_test, _ = dataset.load_test('folder', root, split, prep.input_shape, prep.class_names)
    model, prep = model_io.load_model(model_path)
    expected = model.predict(prep.apply(x_test), verbose=0).argmax(axis=1)
    K.clear_session()
    files = [os.path.join(root, p) for p, _ in split['test_files']]
    proc = run_tool('predict.py', ['--model=' + model_path, '--top=1'] + files)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout)['predictions']
    assert [r['top'][0]['class'] for r in rows] == expected.tolist()
    assert [r['top'][0]['name'] for r in rows] == [('a', 'b')[k] for k in expected]
    # evaluate.py rebuilds the held-out split from split.json: the run's final numbers.
    proc = run_tool(
        'evaluate.py', ['--model=' + model_path, '--output=' + str(tmp_path / 'e.json')]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(result, 'result.json')) as f:
        final = json.load(f)
    evaluation = json.loads(proc.stdout)
    assert evaluation['n_test'] == 12
    assert evaluation['error_dense'] == pytest.approx(final['error_dense'], abs=1e-9)
    proc = run_tool('export.py', ['--model=' + model_path, '--output=' + str(tmp_path / 'export')])
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(str(tmp_path / 'export' / 'serving.json')) as f:
        described = json.load(f)['preprocessing']
    assert described['resize'] == 'crop' and described['alpha'] == 'black'


@pytest.mark.slow
def test_resume_and_later_runs_reuse_the_cache(trained, tmp_path):
    root, base, _ = trained
    result = str(base / 'asl')
    proc = run_tool(
        'train_evaluate_asl2.py',
        ['--data=folder', '--dataset=' + root, '--mode=asl', '--result=' + result, '--resume']
        + TINY,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Decoded 0 images' in proc.stdout and '111 from the cache' in proc.stdout
    # A resume with another image size is refused; an edited image is decoded again.
    proc = run_tool(
        'train_evaluate_asl2.py',
        ['--data=folder', '--dataset=' + root, '--mode=asl', '--result=' + result, '--resume']
        + TINY
        + ['--image_size=24'],
    )
    assert proc.returncode == 2 and '--image_size=24 (saved: 16)' in proc.stderr
    edited = os.path.join(root, 'labeled', 'a', 'img05.png')
    _png(edited, 7, size=16)
    os.utime(edited, ns=(time.time_ns() + 10**9,) * 2)
    other = str(tmp_path / 'other')
    proc = run_tool(
        'train_evaluate_asl2.py',
        [
            '--data=folder',
            '--dataset=' + root,
            '--mode=asl',
            '--result=' + other,
            '--cache=' + os.path.join(result, 'cache'),
        ]
        + TINY,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Decoded 1 images' in proc.stdout and '110 from the cache' in proc.stdout
    assert not os.path.exists(os.path.join(other, 'cache'))
