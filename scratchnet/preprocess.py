"""Turn a photo or scan of a handwritten digit into an MNIST-like 28x28 image.

MNIST was made this way (LeCun et al.): the digit, white on black, was size-normalised to fit
a 20x20 box keeping its aspect ratio (with anti-aliasing, hence grey edges), then placed in a
28x28 field so that its centre of mass lies at the centre. :func:`to_mnist` repeats those
steps on an arbitrary image; :func:`load_image` reads any file PIL can open (a path, bytes
or a file object) in bounded memory. :func:`to_two_digit` does the same for two digits
stacked on the 42 x 28 two-digit canvas.
"""
import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SIZE = 28
BOX = 20
# MNIST digits' centre of mass sits at pixel (14, 14) (row, column; mean over the training set)
CENTRE = 14
# a pixel belongs to the digit when brighter than this fraction of the way from background to ink
INK_THRESHOLD = 0.2
# larger images are refused before decoding: an RGBA image of this size decodes to 100 MB
MAX_PIXELS = 25_000_000
# larger images are shrunk to this (longer side) first; a digit is scaled to 20 pixels anyway
MAX_SIDE = 1024
# modes PIL's reduce() averages correctly (palette and 1-bit images are converted first)
_REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "RGBX")


class ImageError(ValueError):
    """An image file cannot be read, or holds no digit."""


def _gray(img):
    """uint8 grayscale of a PIL image; 16-bit and float images are scaled, not clipped as
    PIL's own convert("L") would."""
    if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
        return np.asarray(img.convert("L"), dtype=np.uint8)
    a = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16") or a.max() > 255:
        top = 65535.0
    else:
        top = 1.0 if img.mode == "F" and a.max() <= 1 else 255.0
    return np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8)


def _source_name(image, source):
    """What messages call ``image``: ``source``, else its path, else the file object's name."""
    if source is not None:
        return str(source)
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    name = getattr(image, "name", None)
    return name if isinstance(name, str) else "image"


def _open(image):
    """PIL's lazy open (header only); PIL's own size warning is ours to give, as an error."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        image = io.BytesIO(image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(image)


def _check_size(img, source):
    """Refuse, from the header alone, an image too large to decode in bounded memory."""
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"{source}: the image is {width} x {height} pixels, more than the "
            f"{MAX_PIXELS // 1_000_000} megapixels scratchnet reads; scale it down first")


def _reduced(img):
    """``img`` shrunk by a whole factor (box averages) until its longer side is <= MAX_SIDE."""
    factor = -(-max(img.size) // MAX_SIDE)
    return img.reduce(factor) if factor > 1 else img


def load_image(image, source=None):
    """An image file as uint8 grayscale (H, W); transparency is flattened onto white.

    image: a path, the file's bytes, or a binary file object. source: the name messages use
    (default: the path, or the file object's name). Images over ``MAX_PIXELS`` are refused
    from their header, before any pixel is decoded; JPEGs are decoded at 1/2, 1/4 or 1/8
    scale when that still leaves ``MAX_SIDE`` pixels, and anything larger than ``MAX_SIDE``
    is reduced by box averaging: a digit needs no more to be scaled to 20 pixels.
    """
    source = _source_name(image, source)
    try:
        with _open(image) as img:
            img.draft("L", (MAX_SIDE, MAX_SIDE))  # JPEG only: the decoder scales for free
            _check_size(img, source)
            img = ImageOps.exif_transpose(img)  # phone photos store their rotation in EXIF
            if img.mode in _REDUCIBLE_MODES:
                img = _reduced(img)
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                rgba = img.convert("RGBA")
                img = Image.new("RGBA", rgba.size, "white")
                img.alpha_composite(rgba)
            return np.asarray(_reduced(Image.fromarray(_gray(img))))
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{source}: no such image file") from None
    except IsADirectoryError:
        raise ImageError(f"{source}: is a folder, not an image file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{source}: not an image file PIL can read") from None
    except Image.DecompressionBombError:
        raise ImageError(
            f"{source}: the image's dimensions are far larger than the "
            f"{MAX_PIXELS // 1_000_000} megapixels scratchnet reads; scale it down first"
        ) from None
    except (OSError, ValueError, SyntaxError) as e:  # truncated or damaged image data
        raise ImageError(f"{source}: cannot read the image ({e})") from None


def _ink(gray):
    """Float image in [0, 1] with the digit bright on a zero background."""
    g = gray.astype(np.float64) / 255.0
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    background = float(np.median(border))
    if background > 0.5:  # dark digit on light paper: invert
        g, background = 1.0 - g, 1.0 - background
    peak = float(g.max())
    if peak - background < 1e-6:
        return None
    return np.clip((g - background) / (peak - background), 0.0, 1.0)


def _bounding_box(ink):
    rows = np.flatnonzero((ink > INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((ink > INK_THRESHOLD).any(axis=0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def _centre_of_mass(a):
    total = a.sum()
    rows, cols = np.indices(a.shape)
    return (rows * a).sum() / total, (cols * a).sum() / total


def _ink_and_box(gray, source, what):
    """Validate a uint8 (H, W) image; return its ink in [0, 1] and the ink's bounding box."""
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.dtype != np.uint8 or min(gray.shape) == 0:
        raise ImageError(
            f"{source}: expected a non-empty uint8 grayscale image (H, W), "
            f"got {gray.dtype} of shape {gray.shape}")
    ink = _ink(gray)
    if ink is None or not (ink > INK_THRESHOLD).any():
        raise ImageError(f"{source}: no {what} found (the image is blank)")
    return ink, _bounding_box(ink)


def to_mnist(gray, source="image"):
    """uint8 grayscale (H, W) of any size -> uint8 (28, 28), white digit on black, as in MNIST.

    Light backgrounds (the median border pixel above mid-grey) are inverted; the background
    level is subtracted and the ink stretched to 0..255; the digit is cropped to the box of
    pixels above ``INK_THRESHOLD``, its longer side scaled to 20 px (PIL LANCZOS, aspect
    kept), and pasted into 28x28 with its centre of mass at (14, 14).
    """
    ink, (top, bottom, left, right) = _ink_and_box(gray, source, "digit")
    digit = Image.fromarray(np.round(ink[top:bottom, left:right] * 255).astype(np.uint8))
    h, w = bottom - top, right - left
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # PIL sizes are (width, height)
    small = np.asarray(digit.resize(size, Image.Resampling.LANCZOS), dtype=np.float64)
    if small.sum() == 0:
        raise ImageError(f"{source}: no digit found (the ink vanished when scaled to 20 px)")
    cy, cx = _centre_of_mass(small)
    # integer shifts, as MNIST used: no second resampling blurs the digit
    y0 = int(np.clip(round(CENTRE - cy), 0, SIZE - small.shape[0]))
    x0 = int(np.clip(round(CENTRE - cx), 0, SIZE - small.shape[1]))
    out = np.zeros((SIZE, SIZE), dtype=np.uint8)
    out[y0:y0 + small.shape[0], x0:x0 + small.shape[1]] = np.round(small).astype(np.uint8)
    return out


def load_digit(image, source=None):
    """An image file (path, bytes or binary file object) as an MNIST-like uint8 (28, 28) digit."""
    source = _source_name(image, source)
    return to_mnist(load_image(image, source), source=source)


# The two-digit canvas (MITx 6.86x): two MNIST digits stacked, the second 14 rows up into the
# first, each centred by its own centre of mass. Measured over generated canvases, splitting
# the ink at the middle row of its bounding box, the upper half's centre of mass lies about
# 15.3 rows above the lower half's, their midpoint at row 20.9, and the whole ink's column
# centre of mass at 14. Placing a new image's two halves there (rather than fitting its
# bounding box, whose height varies from 30 to 37 rows with the digits) keeps each digit where
# the models saw it in training.
TWO_DIGIT_SHAPE = (42, 28)
TWO_DIGIT_HALVES_APART = 15.3
TWO_DIGIT_HALVES_MIDDLE = 20.9
TWO_DIGIT_CENTRE_COLUMN = 14
# the largest the ink may become: the canvas less a 1-pixel border, and two MNIST digits' width
TWO_DIGIT_MAX_INK = (40, 22)


def _halves_centres(ink, top, bottom):
    """Row centres of mass of the ink above and below the middle of rows ``top..bottom``."""
    middle = (top + bottom) // 2
    rows = np.arange(ink.shape[0], dtype=np.float64)
    weight = ink.sum(axis=1)
    upper, lower = weight[top:middle], weight[middle:bottom]
    if upper.sum() == 0 or lower.sum() == 0:  # no ink in one half: a single short stroke
        centre = (top + bottom - 1) / 2
        return centre - TWO_DIGIT_HALVES_APART / 2, centre + TWO_DIGIT_HALVES_APART / 2
    return ((rows[top:middle] * upper).sum() / upper.sum(),
            (rows[middle:bottom] * lower).sum() / lower.sum())


def to_two_digit(gray, source="image"):
    """uint8 grayscale (H, W) of two digits, one above the other -> uint8 (42, 28) canvas.

    As :func:`to_mnist` does for one digit: light backgrounds are inverted, the background
    subtracted and the ink stretched to 0..255, then cropped to its bounding box. The crop is
    scaled (PIL LANCZOS, aspect kept) so that the centres of mass of its upper and lower
    halves lie 15.3 rows apart, as the two digits' do on generated canvases (at most 40 x 22
    pixels), and pasted with their midpoint at row 20.9 and the ink's column centre of mass at
    column 14, where the generated canvases have theirs.
    """
    ink, (top, bottom, left, right) = _ink_and_box(gray, source, "digits")
    upper, lower = _halves_centres(ink, top, bottom)
    h, w = bottom - top, right - left
    scale = min(TWO_DIGIT_HALVES_APART / max(lower - upper, 1e-9),
                TWO_DIGIT_MAX_INK[0] / h, TWO_DIGIT_MAX_INK[1] / w)
    content = Image.fromarray(np.round(ink[top:bottom, left:right] * 255).astype(np.uint8))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # PIL sizes are (width, height)
    small = np.asarray(content.resize(size, Image.Resampling.LANCZOS), dtype=np.float64)
    if small.sum() == 0:
        raise ImageError(f"{source}: no digits found (the ink vanished when scaled down)")
    middle = ((upper + lower) / 2 - top) * small.shape[0] / h  # in the scaled crop's rows
    _, cx = _centre_of_mass(small)
    height, width = TWO_DIGIT_SHAPE
    y0 = int(np.clip(round(TWO_DIGIT_HALVES_MIDDLE - middle), 0, height - small.shape[0]))
    x0 = int(np.clip(round(TWO_DIGIT_CENTRE_COLUMN - cx), 0, width - small.shape[1]))
    out = np.zeros(TWO_DIGIT_SHAPE, dtype=np.uint8)
    out[y0:y0 + small.shape[0], x0:x0 + small.shape[1]] = np.round(small).astype(np.uint8)
    return out


def load_two_digit(image, source=None):
    """An image file of two stacked digits (path, bytes or binary file object) as a uint8
    (42, 28) two-digit canvas."""
    source = _source_name(image, source)
    return to_two_digit(load_image(image, source), source=source)
