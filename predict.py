"""Classifies image files with a saved SESEMI model.

Example:
    python predict.py --model=results/c10_1000/model.h5 --images=photos/ --top=3
    python predict.py --model=results/fm/model.h5 --images shoe.png shirt.jpg

Each image (PNG, JPEG, BMP or GIF) is read with Pillow, transparent pixels
composited on black, converted to the model's channels (gray for 1-channel models,
RGB for 3), brought to the size of the dataset's images the way the dataset loader
does (Fashion-MNIST: 28×28, other sizes resized to it first, then a zero border
of 2 to 32×32; 32×32 datasets: other sizes resized; image folders: the shorter
side resized to the model's size, then the centre cropped), scaled to [0, 1] and
preprocessed with the parameters stored in the model file. The
result is JSON: for each file its top classes with names and probabilities, on
stdout or in --output. Bad input (a file that is not an image, a folder without
images, a bad model file) ends in one line on stderr and exit code 2, before
TensorFlow is imported.
"""

import json
import os
import sys
from typing import List, Optional

import numpy as np
from absl import flags

from dataset import images
from dataset.common import to_unit_float
from sesemi_base.errors import UsageError
from sesemi_base.files import write_json
from sesemi_tf import cli, model_io

EXTENSIONS = '/'.join(e[1:].upper() for e in images.IMAGE_EXTENSIONS)


def define_flags(fv: flags.FlagValues) -> None:
    """Defines the tool's flags on ``fv``."""
    flags.DEFINE_string(
        'model', None, 'The model.h5 a training run wrote (required).', flag_values=fv
    )
    flags.DEFINE_multi_string(
        'images',
        [],
        'An image file (PNG, JPEG, BMP, GIF) or a folder of them; more files may follow the flags',
        flag_values=fv,
    )
    flags.DEFINE_integer(
        'top',
        3,
        'How many of the most probable classes to report per image.',
        lower_bound=1,
        flag_values=fv,
    )
    flags.DEFINE_string(
        'output', None, 'JSON file for the predictions; default: print them.', flag_values=fv
    )
    flags.mark_flag_as_required('model', flag_values=fv)


def image_files(paths: List[str]) -> List[str]:
    """The image files named by ``paths``: files as given, folders' image files sorted.

    Raises:
        UsageError: no paths, a path that does not exist, a folder without images.
    """
    if not paths:
        raise UsageError('no images given; pass --images=FILE_OR_FOLDER')
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(path, name)
                for name in os.listdir(path)
                if images.is_image_file(name) and os.path.isfile(os.path.join(path, name))
            )
            if not found:
                raise UsageError("folder '%s' holds no %s images" % (path, EXTENSIONS))
            files.extend(found)
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise UsageError("image '%s' does not exist" % path)
    return files


def read_image(path: str, shape, pad: int, resize: str = 'stretch') -> np.ndarray:
    """Reads one image as the dataset loader would have stored it.

    Args:
        path: an image file (any format Pillow reads).
        shape: the model input H×W×C (C is 1 or 3).
        pad: the zero border the dataset puts around its source images.
        resize: the model's resize rule (see ``dataset.images``).

    Returns:
        uint8 H×W×C array.

    Raises:
        UsageError: the file is not a readable image.
    """
    try:
        return images.read_pixels(path, shape, resize, pad)
    except images.DECODE_ERRORS as err:
        raise UsageError(
            "'%s' is not a readable image (%s); pass %s files"
            % (path, images.reason(err), EXTENSIONS)
        ) from err


def top_classes(probs: np.ndarray, names, top: int) -> List[dict]:
    """The ``top`` most probable classes of one softmax vector, most probable first."""
    order = np.argsort(-probs, kind='stable')[:top]
    return [{'class': int(k), 'name': names[k], 'probability': float(probs[k])} for k in order]


def run(argv: List[str]) -> int:
    """Runs the tool with ``argv`` (argv[0] is the program name); returns the exit code."""
    fv, positional = cli.parse_flags(define_flags, argv)
    prep = model_io.read_preprocessing(fv.model)
    files = image_files(list(fv.images) + list(positional))
    if prep.input_shape[2] not in (1, 3):
        raise UsageError(
            "model file '%s' takes %d-channel images; only gray (1) and RGB (3) "
            'are supported' % (fv.model, prep.input_shape[2])
        )
    if fv.output:
        cli.check_output(fv.output)
    pixels = to_unit_float(
        np.stack([read_image(f, prep.input_shape, prep.pad, prep.resize) for f in files])
    )

    model, prep = model_io.load_model(fv.model)
    probs = model.predict(prep.apply(pixels), batch_size=256, verbose=0)
    result = {
        'model': os.path.abspath(fv.model),
        'data': prep.data,
        'predictions': [
            {'file': f, 'top': top_classes(p, prep.class_names, fv.top)}
            for f, p in zip(files, probs)
        ],
    }
    if fv.output:
        write_json(fv.output, result)
        print('Predictions for %d images written to %s' % (len(files), fv.output))
    else:
        print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: one line on stderr and exit code 2 for bad input."""
    return cli.main(run, argv)


if __name__ == '__main__':
    sys.exit(main())
