"""Image files to pixels: the one alpha rule and the resize rules that training,
evaluation and prediction share.

Alpha rule: a transparent image is composited on black before anything else, so
a transparent pixel reads as black whatever colour it stores.

Resize rules (named in the model file, so new images are treated as training's):
    stretch  the whole image is resized to the target size, aspect ratio ignored
             (how predict.py brings photos to the benchmark datasets' fixed size);
    crop     the shorter side is resized to the target size keeping the aspect
             ratio, then the centre is cropped to a square (image folders).
Both resize with Pillow's bilinear filter (antialiased when shrinking). Of an
animated GIF the first frame is read.
"""

import struct
import warnings
from typing import Tuple

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif')
RESIZE_RULES = ('stretch', 'crop')
ALPHA_RULE = 'black'  # what transparent pixels become (the model file records it)
GRAY_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'F')

# What Pillow raises for a truncated, damaged or foreign file.
DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    struct.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,  # raised as an error by ``open_image``
)


def is_image_file(name: str) -> bool:
    """Whether a file name has one of the image extensions (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def open_image(path: str) -> Image.Image:
    """Decodes a file into a gray ('L') or colour ('RGB') Pillow image, alpha on black.

    An image of more than ``Image.MAX_IMAGE_PIXELS`` pixels is a bad file: Pillow only
    warns below twice that limit, and would decode it.

    Raises:
        One of DECODE_ERRORS: the file is not a readable image.
    """
    with warnings.catch_warnings():
        warnings.simplefilter('error', Image.DecompressionBombWarning)
        return _open_image(path)


def _open_image(path: str) -> Image.Image:
    with Image.open(path) as img:
        img.seek(0)  # first frame of an animation
        img.load()  # decode now: a truncated file fails here, not later
        gray = img.mode in GRAY_MODES or (img.mode == 'P' and _gray_palette(img))
        if img.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or 'transparency' in img.info:
            rgba = img.convert('RGBA')
            image = Image.alpha_composite(Image.new('RGBA', rgba.size, (0, 0, 0, 255)), rgba)
        else:
            image = img
        if image.mode in ('I', 'I;16', 'F'):  # 16-bit and float gray: scale to 8 bits
            values = np.asarray(image, np.float64)
            top = 65535.0 if values.max() > 255 else 255.0
            image = Image.fromarray(
                np.clip(values * (255.0 / top), 0, 255).round().astype(np.uint8)
            )
        return image.convert('L' if gray else 'RGB')


def _gray_palette(img: Image.Image) -> bool:
    """Whether every colour of a palette image is a shade of gray."""
    palette = np.frombuffer(img.palette.tobytes(), np.uint8)
    if img.palette.mode != 'RGB' or len(palette) % 3:
        return False
    rgb = palette.reshape(-1, 3)
    return bool((rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all())


def fit(img: Image.Image, size: Tuple[int, int], rule: str) -> Image.Image:
    """Brings an image to ``size`` (width, height) by the named resize rule."""
    if rule not in RESIZE_RULES:
        raise ValueError('unknown resize rule %r' % rule)
    if img.size == tuple(size):
        return img
    if rule == 'stretch':
        return img.resize(tuple(size), Image.BILINEAR)
    width, height = img.size
    scale = max(size[0] / width, size[1] / height)  # the shorter side meets the target
    scaled = (max(size[0], round(width * scale)), max(size[1], round(height * scale)))
    if scaled[0] * scaled[1] > (Image.MAX_IMAGE_PIXELS or float('inf')):
        # An extreme aspect ratio (a few bytes of PNG, 10^8 x 1) would be scaled up
        # to gigabytes before the crop.
        raise ValueError('a %dx%d image is too elongated to crop to a square' % (width, height))
    left, top = (scaled[0] - size[0]) // 2, (scaled[1] - size[1]) // 2
    return img.resize(scaled, Image.BILINEAR).crop((left, top, left + size[0], top + size[1]))


def to_array(img: Image.Image, channels: int) -> np.ndarray:
    """uint8 H×W×C pixels of an image, converted to 1 (gray, ITU-R 601 luma) or 3 channels."""
    img = img.convert('L' if channels == 1 else 'RGB')
    return np.asarray(img, np.uint8).reshape(img.size[1], img.size[0], channels)


def read_pixels(path: str, shape: Tuple[int, int, int], rule: str, pad: int = 0) -> np.ndarray:
    """One image file as a model input before scaling: uint8 H×W×C.

    Args:
        path: an image file.
        shape: H×W×C of the result (C is 1 or 3).
        rule: the resize rule ('stretch' or 'crop').
        pad: a zero border of this many pixels on each side, around an image
            resized to the inner (H − 2·pad)×(W − 2·pad).

    Raises:
        One of DECODE_ERRORS: the file is not a readable image.
    """
    height, width, channels = shape
    img = fit(open_image(path), (width - 2 * pad, height - 2 * pad), rule)
    return np.pad(to_array(img, channels), ((pad, pad), (pad, pad), (0, 0)), mode='constant')


def decode_square(path: str, size: int) -> Tuple[np.ndarray, bool]:
    """An image file as stored in the decode cache: size×size×3 uint8 by the 'crop'
    rule, and whether the file is gray (then the three channels are equal).

    Raises:
        One of DECODE_ERRORS: the file is not a readable image.
    """
    img = open_image(path)
    gray = img.mode == 'L'
    return to_array(fit(img, (size, size), 'crop'), 3), gray


def reason(err: BaseException) -> str:
    """A decoding error as a short one-line reason."""
    text = ' '.join(str(err).split()) or type(err).__name__
    return text if len(text) <= 150 else text[:147] + '...'
