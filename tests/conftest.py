"""Shared test fixtures: import path, tensor evaluation under both TF generations,
and tiny datasets written in the official file formats."""

import gzip
import os
import pickle
import struct
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The fuzz tests' hypothesis profile: the same examples on every run (derandomized, no
# example database), no deadline (a case may load TensorFlow or start a process), and a
# budget from SESEMI_FUZZ_EXAMPLES when set (a long run); else each format's own CI budget
# (tests/fuzzing.py).
FUZZ_PROFILE = 'sesemi-fuzz'
FUZZ_EXAMPLES_ENV = 'SESEMI_FUZZ_EXAMPLES'
settings.register_profile(
    FUZZ_PROFILE,
    derandomize=True,
    deadline=None,
    database=None,
    max_examples=int(os.environ.get(FUZZ_EXAMPLES_ENV) or 40),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=False,
)
settings.load_profile(FUZZ_PROFILE)


def to_numpy(structure):
    """Evaluates tensors (nested) to numpy, in a session on TF 1.15, eagerly on TF 2."""
    from sesemi_base.compat import TF1, tf

    if TF1:
        with tf.compat.v1.Session() as sess:
            return sess.run(structure)
    return tf.nest.map_structure(lambda t: t.numpy(), structure)


def take(dataset, n=1):
    """The first ``n`` elements of a tf.data.Dataset as numpy structures."""
    from sesemi_base.compat import TF1, tf

    if TF1:
        nxt = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
        with tf.compat.v1.Session() as sess:
            return [sess.run(nxt) for _ in range(n)]
    it = iter(dataset)
    return [tf.nest.map_structure(lambda t: t.numpy(), next(it)) for _ in range(n)]


def class_images(labels, size=32, channels=3, seed=0):
    """uint8 images whose stripe direction and colour depend on the class, so that
    a few training steps can learn something."""
    rng = np.random.RandomState(seed)
    n = len(labels)
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.empty((n, size, size, channels), np.uint8)
    for i, c in enumerate(labels):
        freq = 1 + (c % 5)
        wave = np.sin((xx if c < 5 else yy) * freq * np.pi / size)
        base = 128 + 100 * wave[..., None] * (0.5 + 0.5 * ((c + np.arange(channels)) % 2))
        images[i] = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
    return images


def write_cifar10(folder, per_class_per_batch=2, test_per_class=3, seed=0):
    """Writes data_batch_1..5 and test_batch pickles like the official CIFAR-10 files."""
    os.makedirs(folder, exist_ok=True)
    names = ['data_batch_%d' % i for i in range(1, 6)] + ['test_batch']
    for k, name in enumerate(names):
        count = test_per_class if name == 'test_batch' else per_class_per_batch
        labels = np.repeat(np.arange(10), count)
        images = class_images(labels, seed=seed + k)
        data = images.transpose(0, 3, 1, 2).reshape(len(labels), 3072)  # channel-major rows
        with open(os.path.join(folder, name), 'wb') as f:
            pickle.dump(
                {'data': data, 'labels': labels.tolist(), 'batch_label': name}, f, protocol=2
            )
    return str(folder)


def idx_bytes(array, magic=None):
    """An IDX file of uint8 values: magic, big-endian dimensions, data."""
    magic = (0x800 | array.ndim) if magic is None else magic
    return (
        struct.pack('>I', magic)
        + struct.pack('>%dI' % array.ndim, *array.shape)
        + array.astype(np.uint8).tobytes()
    )


def write_bytes(path, raw):
    """Writes ``raw``, gzip-compressed when the name ends in '.gz'."""
    opener = gzip.open if str(path).endswith('.gz') else open
    with opener(str(path), 'wb') as f:
        f.write(raw)


def write_fashion_mnist(folder, per_class_train=4, per_class_test=3, seed=0):
    """Writes the four Fashion-MNIST IDX .gz files with learnable class images."""
    os.makedirs(folder, exist_ok=True)
    for prefix, count in (('train', per_class_train), ('t10k', per_class_test)):
        labels = np.tile(np.arange(10), count)
        images = class_images(labels, size=28, channels=1, seed=seed)[..., 0]
        write_bytes(os.path.join(folder, prefix + '-images-idx3-ubyte.gz'), idx_bytes(images))
        write_bytes(os.path.join(folder, prefix + '-labels-idx1-ubyte.gz'), idx_bytes(labels))
    return str(folder)


def write_noise_fashion_mnist(folder):
    """Fashion-MNIST files of uniform noise images. (The stripes of ``class_images`` clip
    to flat regions, whose max-pooling windows hold near-ties: a round-off difference
    between two runs then routes a gradient to another pixel, a jump rather than a
    round-off difference.)"""
    os.makedirs(folder)
    rng = np.random.RandomState(0)
    for prefix, count in (('train', 40), ('t10k', 30)):
        write_bytes(
            os.path.join(folder, prefix + '-images-idx3-ubyte.gz'),
            idx_bytes(rng.randint(0, 256, (count, 28, 28))),
        )
        write_bytes(
            os.path.join(folder, prefix + '-labels-idx1-ubyte.gz'), idx_bytes(np.arange(count) % 10)
        )
    return folder


@pytest.fixture
def tiny_fashion(tmp_path):
    """A Fashion-MNIST folder with 40 training and 30 test images (no ZCA: quick to start)."""
    return write_fashion_mnist(str(tmp_path / 'fashion'))


@pytest.fixture
def tiny_cifar10(tmp_path):
    """A CIFAR-10 folder with 100 training and 30 test images."""
    return write_cifar10(str(tmp_path / 'cifar-10-batches-py'))


def stub_adapter_tf1(
    monkeypatch, loss_scale_optimizer, manager=lambda **kwargs: 'manager', **npu_init
):
    """Installs stand-ins for the TF 1.15 Ascend adapter's modules: the loss-scale optimizer
    and manager given, and ``npu_init`` holding the names given. Returns npu_init."""
    import types

    modules = {
        'npu_bridge': {},
        'npu_bridge.npu_init': npu_init,
        'npu_bridge.estimator': {},
        'npu_bridge.estimator.npu': {},
        'npu_bridge.estimator.npu.npu_loss_scale_manager': {
            'ExponentialUpdateLossScaleManager': manager
        },
        'npu_bridge.estimator.npu.npu_loss_scale_optimizer': {
            'NPULossScaleOptimizer': loss_scale_optimizer
        },
    }
    for name, attributes in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)
    return sys.modules['npu_bridge.npu_init']


def expect_usage_error(capsys, argv, *words):
    """Runs the training entry with ``argv``; checks exit code 2 and one error line
    on stderr holding every one of ``words``."""
    import train_evaluate_asl2 as entry

    assert entry.main(['train_evaluate_asl2.py'] + argv) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: '), err
    for word in words:
        assert word in err, err


def write_image_folder(root, per_class=30, unlabeled=50, size=16, test_folder=False):
    """Writes a folder dataset of two classes in every format the loader reads: gray PNGs,
    an RGBA PNG, a JPEG, a BMP and a GIF, plus a corrupt PNG and a text file in labeled/b,
    and unlabeled images two levels deep. Returns the corrupt file's path relative to root."""
    from PIL import Image

    labels = np.repeat([0, 1], per_class)
    gray = class_images(labels, size=size, channels=1, seed=1)[..., 0]
    colour = class_images(labels, size=size, channels=3, seed=2)
    for i, name in enumerate(['a'] * per_class + ['b'] * per_class):
        folder = os.path.join(root, 'labeled', name)
        os.makedirs(folder, exist_ok=True)
        k = i % per_class
        if k == 0:
            rgba = np.dstack([colour[i], np.full((size, size), 255, np.uint8)])
            rgba[0, 0, 3] = 0  # one transparent pixel: composited on black
            Image.fromarray(rgba, 'RGBA').save(os.path.join(folder, 'img%02d.png' % k))
        elif k == 1:
            Image.fromarray(colour[i]).save(os.path.join(folder, 'img%02d.jpg' % k), quality=95)
        elif k == 2:
            Image.fromarray(colour[i]).save(os.path.join(folder, 'img%02d.bmp' % k))
        elif k == 3:
            Image.fromarray(gray[i]).convert('P').save(os.path.join(folder, 'img%02d.gif' % k))
        else:  # gray PNGs of other sizes: resized and cropped by the loader
            Image.fromarray(gray[i]).resize((size + 4 * (k % 3), size)).save(
                os.path.join(folder, 'img%02d.png' % k)
            )
    with open(os.path.join(root, 'labeled', 'b', 'broken.png'), 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + b'\0' * 40)
    with open(os.path.join(root, 'labeled', 'b', 'notes.txt'), 'w') as f:
        f.write('not an image')
    deep = os.path.join(root, 'unlabeled', 'part1', 'deeper')
    os.makedirs(deep)
    for i, image in enumerate(
        class_images(np.arange(unlabeled) % 2, size=size, channels=3, seed=3)
    ):
        Image.fromarray(image).save(
            os.path.join(deep if i % 2 else os.path.dirname(deep), 'u%03d.png' % i)
        )
    if test_folder:
        for label, name in enumerate(['a', 'b']):
            folder = os.path.join(root, 'test', name)
            os.makedirs(folder)
            for i, image in enumerate(class_images([label] * 3, size=size, channels=3, seed=4)):
                Image.fromarray(image).save(os.path.join(folder, 't%d.png' % i))
    return os.path.join('labeled', 'b', 'broken.png')
