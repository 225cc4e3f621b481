"""Image files -> MNIST-like digits: real MNIST digits survive a round trip through a photo."""
import io
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from scratchnet import preprocess
from scratchnet.data import load_mnist
from scratchnet.preprocess import ImageError, load_digit, load_image, to_mnist


@pytest.fixture(scope="module")
def digits():
    images, labels = load_mnist("test")
    return images[:60], labels[:60]


def as_photo(digit, scale=4, resample=Image.Resampling.BICUBIC, mode="RGB"):
    """An MNIST digit as someone might photograph it: larger, dark ink on light paper, colour."""
    img = Image.fromarray(255 - digit).resize((28 * scale, 28 * scale), resample)
    return img.convert(mode)


def best_shifted_correlation(a, b):
    """Correlation of a and b, allowing a shift of up to one pixel (centre-of-mass rounding)."""
    b = b.astype(np.float64).ravel()
    return max(np.corrcoef(np.roll(a, (dy, dx), axis=(0, 1)).astype(np.float64).ravel(), b)[0, 1]
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def centre_of_mass(a):
    a = a.astype(np.float64)
    rows, cols = np.indices(a.shape)
    return (rows * a).sum() / a.sum(), (cols * a).sum() / a.sum()


def test_an_mnist_digit_is_nearly_a_fixed_point(digits):
    images, _ = digits
    errors = [np.abs(to_mnist(d).astype(int) - d).mean() / 255 for d in images]
    assert np.median(errors) < 0.01 and np.mean(errors) < 0.02


@pytest.mark.parametrize("scale, resample", [(4, Image.Resampling.NEAREST),
                                             (5, Image.Resampling.BICUBIC),
                                             (3, Image.Resampling.LANCZOS)])
def test_photo_of_an_mnist_digit_comes_back_close_to_the_original(tmp_path, digits, scale,
                                                                  resample):
    images, _ = digits
    correlations = []
    for i, d in enumerate(images[:20]):
        path = tmp_path / f"{i}.png"
        as_photo(d, scale, resample).save(path)
        out = load_digit(path)
        assert out.dtype == np.uint8 and out.shape == (28, 28)
        correlations.append(best_shifted_correlation(out, d))
    assert min(correlations) > 0.85 and np.mean(correlations) > 0.93


def test_output_is_framed_as_mnist(digits):
    images, _ = digits
    photo = np.asarray(as_photo(images[0], 6).convert("L"))
    out = to_mnist(photo)
    rows = np.flatnonzero((out > 0).any(axis=1))
    cols = np.flatnonzero((out > 0).any(axis=0))
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 in (20, 21)  # LANCZOS ringing: +-1
    cy, cx = centre_of_mass(out)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5
    assert out.max() == 255


def test_light_and_dark_backgrounds_give_the_same_digit(digits):
    images, _ = digits
    dark_on_light = np.asarray(as_photo(images[3], 4).convert("L"))
    light_on_dark = 255 - dark_on_light
    assert np.array_equal(to_mnist(dark_on_light), to_mnist(light_on_dark))


def test_grey_paper_and_off_centre_digit(digits):
    images, _ = digits
    photo = np.full((300, 200), 190, dtype=np.uint8)  # grey paper, digit in a corner
    ink = np.asarray(Image.fromarray(images[5]).resize((84, 84), Image.Resampling.BICUBIC))
    photo[10:94, 100:184] = 190 - (ink.astype(np.int32) * 150 // 255)
    assert best_shifted_correlation(to_mnist(photo), images[5]) > 0.9


def test_aspect_ratio_is_kept_for_a_thin_one():
    stroke = np.zeros((200, 120), dtype=np.uint8)
    stroke[20:180, 55:65] = 255  # a tall thin bar: 160 x 10
    out = to_mnist(stroke)
    rows = np.flatnonzero((out > 64).any(axis=1))
    cols = np.flatnonzero((out > 64).any(axis=0))
    assert len(rows) == 20 and 1 <= len(cols) <= 3


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P", "L", "I;16", "1"])
def test_any_colour_mode_and_jpeg(tmp_path, digits, mode):
    images, _ = digits
    reference = to_mnist(np.asarray(as_photo(images[7], 4).convert("L")))
    photo = as_photo(images[7], 4, mode="RGB")
    img = photo.convert(mode) if mode != "I;16" else Image.fromarray(
        np.asarray(photo.convert("L")).astype(np.uint16) * 257)
    path = tmp_path / "digit.png"
    img.save(path)
    assert best_shifted_correlation(load_digit(path), reference) > 0.9
    jpeg = tmp_path / "digit.jpg"
    photo.save(jpeg, quality=85)
    assert best_shifted_correlation(load_digit(jpeg), reference) > 0.9


def test_transparent_background_counts_as_paper(tmp_path, digits):
    images, _ = digits
    ink = images[9]
    rgba = np.zeros((28, 28, 4), dtype=np.uint8)  # black strokes, alpha = ink, clear elsewhere
    rgba[..., 3] = ink
    path = tmp_path / "clear.png"
    Image.fromarray(rgba, "RGBA").resize((112, 112), Image.Resampling.BICUBIC).save(path)
    assert load_image(path)[0, 0] == 255
    assert best_shifted_correlation(load_digit(path), ink) > 0.9


def test_blank_unreadable_and_missing_images_raise_image_error(tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (50, 50), "white").save(blank)
    with pytest.raises(ImageError, match="no digit"):
        load_digit(blank)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageError, match="notes.png"):
        load_digit(text)
    truncated = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), "white").save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(ImageError, match="cut.png"):
        load_digit(truncated)
    with pytest.raises(ImageError, match="no such"):
        load_digit(tmp_path / "absent.png")
    with pytest.raises(ImageError, match="grayscale"):
        to_mnist(np.zeros((4, 4, 3), dtype=np.uint8))


def png_of_zeros(path, width, height):
    """A grayscale PNG of ``width`` x ``height`` black pixels, written row by row: a few KB on
    disk however large it declares itself, and never whole in memory here."""
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
    packer = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the pixels
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
                     + chunk(b"IEND", b""))
    return path


def run_measured(call, path):
    """(peak resident memory in bytes that a fresh Python process gains while evaluating
    ``call``, source text using ``path``; the result's repr or the ImageError's message)."""
    script = (
        "import resource, sys\n"
        "from scratchnet import preprocess\n"
        "path = sys.argv[1]\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        f"    out = repr({call})\n"
        "except preprocess.ImageError as e:\n"
        "    out = 'ImageError: ' + str(e)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print((after - before) * 1024)\n"
        "print(out)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    growth, out = done.stdout.split("\n", 1)
    return int(growth), out.strip()


def test_a_small_file_declaring_huge_dimensions_is_refused_from_its_header(tmp_path):
    path = png_of_zeros(tmp_path / "huge.png", 12000, 12000)
    assert path.stat().st_size < 400_000
    growth, out = run_measured("preprocess.load_digit(path)", path)
    # decoding it would take 144 MB (L) before any check
    assert growth < 20 * 2**20, growth
    limit = preprocess.MAX_PIXELS // 1_000_000
    assert out == (f"ImageError: {path}: the image is 12000 x 12000 pixels, more than the "
                   f"{limit} megapixels scratchnet reads; scale it down first")


def test_dimensions_beyond_pils_own_limit_give_the_same_kind_of_line(tmp_path):
    path = png_of_zeros(tmp_path / "bomb.png", 20000, 20000)  # over PIL's 179 megapixels
    with pytest.raises(ImageError, match=r"bomb.png: .*megapixels") as info:
        load_digit(path)
    assert "DOS" not in str(info.value)


def test_a_large_photo_is_decoded_small_and_still_reads_right(tmp_path, digits):
    images, _ = digits
    side = 4800
    photo = Image.fromarray(255 - images[11]).resize((side, side), Image.Resampling.BICUBIC)
    path = tmp_path / "big.jpg"
    photo.convert("RGB").save(path, quality=90)
    del photo
    growth, out = run_measured("preprocess.load_image(path).shape", path)
    # decoded whole as RGB it would take 69 MB; the decoder's 1/4 scale needs 1.4 MB
    assert growth < 20 * 2**20, growth
    assert max(eval(out)) <= preprocess.MAX_SIDE
    assert best_shifted_correlation(load_digit(path), images[11]) > 0.9


def test_a_large_png_is_reduced_to_max_side(tmp_path, digits):
    images, _ = digits
    photo = Image.new("L", (3000, 2100), 255)
    photo.paste(Image.fromarray(255 - images[12]).resize((2000, 2000)), (500, 50))
    path = tmp_path / "big.png"
    photo.save(path)
    gray = load_image(path)
    assert max(gray.shape) <= preprocess.MAX_SIDE and gray.shape[1] > gray.shape[0]
    assert best_shifted_correlation(load_digit(path), images[12]) > 0.9


def test_bytes_and_file_objects_read_like_the_file(tmp_path, digits):
    images, _ = digits
    path = tmp_path / "d.png"
    as_photo(images[4]).save(path)
    expected = load_digit(path)
    assert np.array_equal(load_digit(path.read_bytes()), expected)
    with open(path, "rb") as f:
        assert np.array_equal(load_digit(f), expected)
    assert np.array_equal(load_digit(io.BytesIO(path.read_bytes())), expected)
    with pytest.raises(ImageError, match="^upload: not an image file"):
        load_digit(b"not an image", source="upload")
    with pytest.raises(ImageError, match="^image: no digit"):
        load_digit(png_bytes(Image.new("L", (40, 40), 255)))


def png_bytes(img):
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()
