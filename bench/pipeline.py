"""Input-pipeline throughput: this project's tf.data pipeline against the
reference's per-image Keras ImageDataGenerator flows, on the same batch
composition (batch_size × 6 labeled images + batch_size pool images expanded
into 6 proxy views each). Prints images/s of both and, as the last line, their
ratio.

    .venv/bin/python bench/pipeline.py [--steps 300] [--batch_size 16]

(`source test/malloc.sh` first runs it with tcmalloc, as make and the launch scripts do.)
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import utils  # noqa: E402

# TensorFlow is imported by the functions that use it, so that importing this script for its
# flags (make_parser, read by tests/test_docs.py) does not load it.


def reference_steps(x, y, batch_size):
    """The reference's loader: shuffled batch-size-1 flows, one Python call per image."""
    from sesemi_base.compat import keras

    shifts = [-2, -1, 0, 1, 2]
    common = {
        'width_shift_range': shifts,
        'height_shift_range': shifts,
        'fill_mode': 'reflect',
        'preprocessing_function': utils.gaussian_noise,
    }
    labeled = keras.preprocessing.image.ImageDataGenerator(horizontal_flip=True, **common).flow(
        x, y, batch_size=1, shuffle=True
    )
    pool = keras.preprocessing.image.ImageDataGenerator(horizontal_flip=False, **common).flow(
        x, batch_size=1, shuffle=True
    )
    while True:
        xs, ys = zip(*[next(labeled) for _ in range(batch_size * 6)])
        views, proxy = zip(*[utils.geometric_transform(next(pool)[0]) for _ in range(batch_size)])
        yield np.vstack(xs), np.vstack(ys), np.vstack(views), np.vstack(proxy)


def ours(x, y, batch_size, seed=0):
    from sesemi_base.compat import TF1, tf
    from sesemi_tf.pipeline import BatchSampler, make_dataset

    sampler = BatchSampler(np.arange(len(x)), np.arange(len(x)), batch_size * 6, batch_size, seed)
    dataset = make_dataset(x, y, sampler, seed, hflip=True)
    if TF1:
        nxt = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
        sess = tf.compat.v1.Session()
        while True:
            yield sess.run(nxt)
    yield from dataset


def images_per_second(steps_iter, steps, images_per_step, warmup=20):
    for _ in range(warmup):
        next(steps_iter)
    start = time.perf_counter()
    for _ in range(steps):
        next(steps_iter)
    return steps * images_per_step / (time.perf_counter() - start)


def make_parser() -> argparse.ArgumentParser:
    """The script's flags, built apart from main() so that tests/test_docs.py can check
    the command lines the documentation quotes against them."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--steps', type=int, default=300, help='timed steps of our pipeline')
    parser.add_argument(
        '--reference_steps', type=int, default=30, help='timed steps of the reference'
    )
    parser.add_argument('--batch_size', type=int, default=16, help='pool images per step')
    parser.add_argument('--images', type=int, default=5000, help='size of the synthetic image set')
    return parser


def main():
    args = make_parser().parse_args()
    from sesemi_base.compat import tf

    rng = np.random.RandomState(0)
    x = rng.rand(args.images, 32, 32, 3).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.randint(0, 10, args.images)]
    per_step = args.batch_size * 6 * 2
    malloc = 'tcmalloc' if 'tcmalloc' in os.environ.get('LD_PRELOAD', '') else 'glibc malloc'
    print(
        'TensorFlow %s, %d CPU cores, %s, %d images per step'
        % (tf.__version__, os.cpu_count(), malloc, per_step)
    )
    ref = images_per_second(
        reference_steps(x, y, args.batch_size), args.reference_steps, per_step, 3
    )
    print(
        'reference per-image pipeline: %.0f images/s (%.1f ms/step)' % (ref, 1000 * per_step / ref)
    )
    our = images_per_second(ours(x, y, args.batch_size), args.steps, per_step)
    print(
        'tf.data pipeline:             %.0f images/s (%.1f ms/step)' % (our, 1000 * per_step / our)
    )
    print('speedup: %.1fx' % (our / ref))


if __name__ == '__main__':
    main()
