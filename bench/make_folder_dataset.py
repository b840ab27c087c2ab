r"""Writes an image-folder dataset (``--data=folder``) from Fashion-MNIST as PNG files.

Example:
    python bench/make_folder_dataset.py --output=datasets/fashion_folder
    python train_evaluate_asl2.py --data=folder --dataset=datasets/fashion_folder \
        --mode=sesemi --result=results/fashion_folder

The folder gets ``labeled/<k>_<class name>/`` (--labeled_per_class images of each
class from the training set), ``test/<k>_<class name>/`` (--test_per_class images of
each class from the test set) and ``unlabeled/<chunk>/`` (--unlabeled training
images not among the labeled ones, reused cyclically when more are asked for than
remain). The class folders carry the label as a prefix so that their sorted order
is Fashion-MNIST's. Images are written as 28×28 gray PNGs, or with --colour as
32×32 RGB PNGs: tinted with a random colour and shifted by up to 2 pixels, so that
repeated source images still differ (the large-pool check of docs/own-images.md
uses --colour --unlabeled=200000). The output folder must not exist yet.
"""

import argparse
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataset  # noqa: E402
from dataset import fashion_mnist  # noqa: E402

PER_FOLDER = 1000  # unlabeled images per sub-folder


def class_folder(label: int) -> str:
    """'<label>_<name>' with characters that cannot be in a file name replaced."""
    name = fashion_mnist.CLASS_NAMES[label].replace('/', '_').replace(' ', '_')
    return '%d_%s' % (label, name)


def render(image: np.ndarray, colour: bool, rng: np.random.RandomState) -> Image.Image:
    """A padded 32×32 Fashion-MNIST image as a 28×28 gray or a tinted, shifted 32×32 RGB image."""
    pad = fashion_mnist.PAD
    if not colour:
        return Image.fromarray(image[pad:-pad, pad:-pad, 0])
    dy, dx = rng.randint(-pad, pad + 1, size=2)
    shifted = np.roll(image[..., 0], (dy, dx), axis=(0, 1)).astype(np.float32) / 255.0
    tint = rng.uniform(0.3, 1.0, size=3)
    background = rng.uniform(0.0, 0.3, size=3)
    rgb = shifted[..., None] * tint + (1.0 - shifted[..., None]) * background
    return Image.fromarray(np.round(255.0 * rgb).astype(np.uint8))


def write(
    images: np.ndarray,
    labels: np.ndarray,
    per_class: int,
    folder: str,
    colour: bool,
    rng: np.random.RandomState,
) -> np.ndarray:
    """Writes the first ``per_class`` images of each class to folder/<class>/;
    returns their indices."""
    chosen = []
    for label in range(len(fashion_mnist.CLASS_NAMES)):
        target = os.path.join(folder, class_folder(label))
        os.makedirs(target)
        indices = np.where(labels == label)[0][:per_class]
        for i in indices:
            render(images[i], colour, rng).save(os.path.join(target, '%05d.png' % i))
        chosen.extend(indices.tolist())
    return np.asarray(chosen, np.int64)


def make_parser() -> argparse.ArgumentParser:
    """The script's flags, built apart from main() so that tests/test_docs.py can check
    the command lines the documentation quotes against them."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--output', required=True, help='folder to create')
    parser.add_argument(
        '--source',
        default=dataset.get('fashion_mnist').default_dir,
        help="Fashion-MNIST folder (default: the Debian package's)",
    )
    parser.add_argument('--labeled_per_class', type=int, default=100)
    parser.add_argument('--test_per_class', type=int, default=100)
    parser.add_argument('--unlabeled', type=int, default=10000)
    parser.add_argument('--colour', action='store_true', help='32x32 RGB, tinted and shifted')
    parser.add_argument('--seed', type=int, default=0)
    return parser


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    if os.path.exists(args.output):
        print('error: --output %s exists; pass a new folder' % args.output, file=sys.stderr)
        return 2
    try:
        (x, y), (xt, yt) = dataset.load('fashion_mnist', args.source)
    except dataset.UsageError as err:
        print('error: %s' % err, file=sys.stderr)
        return 2
    x, xt = np.round(x * 255).astype(np.uint8), np.round(xt * 255).astype(np.uint8)
    rng = np.random.RandomState(args.seed)
    labeled = write(
        x, y, args.labeled_per_class, os.path.join(args.output, 'labeled'), args.colour, rng
    )
    write(xt, yt, args.test_per_class, os.path.join(args.output, 'test'), args.colour, rng)
    rest = np.setdiff1d(np.arange(len(x)), labeled)
    for k in range(args.unlabeled):
        folder = os.path.join(args.output, 'unlabeled', '%04d' % (k // PER_FOLDER))
        if k % PER_FOLDER == 0:
            os.makedirs(folder)
        render(x[rest[k % len(rest)]], args.colour, rng).save(os.path.join(folder, '%06d.png' % k))
    print(
        'Wrote %d labeled, %d test and %d unlabeled images to %s'
        % (len(labeled), args.test_per_class * 10, args.unlabeled, args.output)
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
