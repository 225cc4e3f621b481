"""Load a model for the studio and look inside it: prediction, every layer's output, filters.

Images go through :mod:`scratchnet.preprocess` exactly as ``scratchnet predict`` sends them, so
the page and the command line predict alike on the same picture.
"""
import base64
import io
import os
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .. import models, nn, preprocess, tasks
from ..nn import functional as F
from ..run import Run

# an image may declare at most this many pixels (a 16 MP phone photo); bigger ones are refused
# before decoding, since preprocessing holds a few float copies of it
MAX_PIXELS = 16_000_000
# images decoded at once: bounds the memory that concurrent uploads take
_decoding = threading.BoundedSemaphore(2)
# drawn arrays (JSON) may be at most this many pixels on a side
MAX_SIDE = 2048
# layers that show nothing new: Flatten reshapes, Dropout is the identity in eval mode
IDENTITY_LAYERS = ("Flatten", "Dropout")


class InputError(ValueError):
    """A request's image or array cannot be used; ``status`` is the HTTP status to answer."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


@dataclass
class Loaded:
    """A model ready for inference, with what its training run used to feed it."""

    model: object
    name: str
    normalization: tuple | None
    config: dict
    run: Run

    @property
    def two_digit(self):
        return models.OUTPUTS[self.name] == "two_logits"

    @property
    def image_shape(self):
        """(H, W) of the images the model reads: (28, 28), or (42, 28) for two digits."""
        return preprocess.TWO_DIGIT_SHAPE if self.two_digit else (preprocess.SIZE,
                                                                  preprocess.SIZE)

    def describe(self):
        layers = sum(1 for _ in _leaf_layers(self.model))
        params = int(sum(p.data.size for p in self.model.parameters()))
        return {"model": self.name, "two_digit": self.two_digit,
                "image_shape": list(self.image_shape), "parameters": params, "layers": layers,
                "normalization": list(self.normalization) if self.normalization else None}


# Layers keep their last forward's cache and fusion is a global switch: one inference at a time.
LOCK = threading.Lock()
_cache = {}
_cache_lock = threading.Lock()


def load(path):
    """The model in ``path`` (.npz checkpoint or .pt/.pth state dict) as :meth:`Run.load`
    gives it, cached until the file changes."""
    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size)
    with _cache_lock:  # one load per file at a time; other threads wait for its result
        if key not in _cache:
            loaded = _load(path)
            for old in [k for k in _cache if k[0] == path]:
                del _cache[old]
            _cache[key] = loaded
        return _cache[key]


def _load(path):
    run = Run.load(path)  # what `scratchnet predict` loads: the model and its run's config
    normalization = run.config["normalize"]
    return Loaded(run.model, run.config["model"],
                  tuple(normalization) if normalization else None, run.config, run)


class _Upload(io.BytesIO):
    """Uploaded bytes that name themselves in preprocessing's error messages."""

    def __str__(self):
        return "the uploaded image"


def image_from_bytes(data, two_digit):
    """Uploaded image file bytes -> the uint8 image the model reads (preprocess.load_digit)."""
    try:
        with Image.open(io.BytesIO(data)) as probe:  # reads the header only
            width, height = probe.size
    except Image.DecompressionBombError:
        raise InputError("the uploaded image is too large to decode", 413) from None
    except Exception:
        raise InputError("the upload is not an image file PIL can read (PNG, JPEG, ...)") from None
    if width * height > MAX_PIXELS:
        raise InputError(f"the uploaded image is too large: {width}x{height} pixels, at most "
                         f"{MAX_PIXELS:,} are accepted", 413)
    load = preprocess.load_two_digit if two_digit else preprocess.load_digit
    try:
        with _decoding:
            return load(_Upload(data))
    except Image.DecompressionBombError:
        raise InputError("the uploaded image is too large to decode", 413) from None
    except preprocess.ImageError as e:  # damaged image data, or no digit in it
        raise InputError(str(e), 422) from None


def image_from_pixels(pixels, two_digit):
    """A drawn grayscale array (rows of numbers 0..255, any size) -> the uint8 image the model
    reads, through the same preprocessing as an image file."""
    try:
        a = np.asarray(pixels, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("pixels: expected rows of numbers 0..255 (a 2-D array)") from None
    if a.ndim != 2 or min(a.shape) < 1 or max(a.shape) > MAX_SIDE:
        raise InputError(f"pixels: expected a 2-D array of at most {MAX_SIDE} per side, "
                         f"got shape {a.shape}")
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 255:
        raise InputError("pixels: values must be numbers from 0 to 255")
    gray = np.round(a).astype(np.uint8)
    convert = preprocess.to_two_digit if two_digit else preprocess.to_mnist
    try:
        return convert(gray, source="pixels")
    except preprocess.ImageError as e:  # no digit drawn
        raise InputError(str(e), 422) from None


def probabilities(loaded, images):
    """Class probabilities for uint8 images (N, H, W): (N, 10), or (N, 2, 10) for two digits."""
    with LOCK:
        return loaded.run.predict(images)


def _leaf_layers(model):
    """``(name, layer)`` for every registered layer without children."""
    return [(name, module) for name, module in model.named_modules()
            if next(iter(module.children()), None) is None]


@dataclass(frozen=True)
class FunctionCall:
    """One call of an ``nn.functional`` op in a model's forward (``F.relu(x)``): a step with
    an output to show that is not a registered layer."""

    function: str
    kind: str
    arguments: str

    def extra_repr(self):
        return self.arguments


# the functional ops whose outputs the page shows, with the layer class each one stands for;
# dropout (the identity in eval mode), flatten and the final (log-)softmax show nothing new
SHOWN_FUNCTIONS = {"relu": "ReLU", "leaky_relu": "LeakyReLU", "max_pool2d": "MaxPool2d"}


def _kind(layer):
    return layer.kind if isinstance(layer, FunctionCall) else type(layer).__name__


def capture_activations(model, x):
    """Run ``model(x)`` and record what each leaf layer, and each ``nn.functional`` op of
    ``SHOWN_FUNCTIONS`` its forward calls, returned, in call order.

    Returns ``(output, [(name, layer, output), ...])``, a :class:`FunctionCall` standing for
    the layer of a functional op (named ``F.relu``...). Uses the layers'
    ``register_forward_hook`` where they have one, and otherwise wraps each layer instance's
    ``forward`` (and the functional ops) for the duration of the call. Fusion is turned off
    meanwhile, so that every layer runs by itself (a fused conv-relu-pool would hide two of
    its three outputs).
    """
    records = []
    leaves = _leaf_layers(model)
    names = {id(layer): name for name, layer in leaves}

    def record(layer, output):
        records.append((names[id(layer)], layer, output))

    undo = []
    try:
        for _, layer in leaves:
            if hasattr(layer, "register_forward_hook"):
                handle = layer.register_forward_hook(
                    lambda module, inputs, output: record(module, output))
                undo.append(handle.remove)
            else:
                undo.append(_wrap_forward(layer, record))
        for function, kind in SHOWN_FUNCTIONS.items():
            undo.append(_wrap_function(function, kind, records))
        with nn.fusion.disabled():
            out = model(x)
    finally:
        for restore in reversed(undo):
            restore()
    return out, records


def _wrap_function(function, kind, records):
    """Make ``nn.functional.<function>`` also record its calls; returns the undo function."""
    original = getattr(F, function)

    def recording(input, *args, **kwargs):
        output = original(input, *args, **kwargs)
        arguments = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
        records.append((f"F.{function}", FunctionCall(function, kind, arguments), output))
        return output

    setattr(F, function, recording)
    return lambda: setattr(F, function, original)


def _wrap_forward(layer, record):
    """Make ``layer.forward`` also call ``record(layer, output)``; returns the undo function."""
    had_own = "forward" in layer.__dict__
    own = layer.__dict__.get("forward")
    forward = layer.forward

    def recording_forward(*args, **kwargs):
        output = forward(*args, **kwargs)
        record(layer, output)
        return output

    layer.__dict__["forward"] = recording_forward

    def undo():
        if had_own:
            layer.__dict__["forward"] = own
        else:
            layer.__dict__.pop("forward", None)

    return undo


def _encode(a, symmetric=False):
    """Float array -> base64 of uint8 scaled to 0..255 over the whole array (``symmetric``:
    0 maps to 128, so the sign of a weight shows), with the range it was scaled from."""
    a = np.nan_to_num(np.asarray(a, dtype=np.float64))
    if symmetric:
        top = float(np.abs(a).max()) or 1.0
        lo, hi = -top, top
    else:
        lo, hi = float(a.min()), float(a.max())
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    u8 = np.round((a - lo) * scale).astype(np.uint8)
    return {"data": base64.b64encode(u8.tobytes()).decode("ascii"), "min": lo, "max": hi}


def encode_image(u8):
    """uint8 (H, W) -> {"shape", "data" (base64 of the row-major bytes)}."""
    u8 = np.ascontiguousarray(u8, dtype=np.uint8)
    return {"shape": list(u8.shape), "data": base64.b64encode(u8.tobytes()).decode("ascii")}


def _layer_label(name, layer):
    kind = _kind(layer)
    extra = layer.extra_repr() if hasattr(layer, "extra_repr") else ""
    return {"name": name, "type": kind, "description": f"{kind}({extra})"}


def _activation_entry(name, layer, output):
    a = np.asarray(output)[0]
    entry = _layer_label(name, layer)
    entry["shape"] = list(a.shape)
    if a.ndim == 3:
        entry["kind"] = "maps"  # (C, H, W): one map per channel
    else:
        entry["kind"] = "vector"
        a = a.reshape(-1)
    entry.update(_encode(a))
    return entry


def filters(loaded):
    """The first layer's weights as pictures: the first Conv2d's filters (C_out maps of KH x KW,
    first input channel), or else a first Linear's rows shaped as the input image."""
    for name, layer in _leaf_layers(loaded.model):
        weight = getattr(layer, "weight", None)
        if weight is None:
            continue
        w = np.asarray(weight.data)
        if w.ndim == 4:
            maps = w[:, 0]
        elif w.ndim == 2 and w.shape[1] == int(np.prod(loaded.image_shape)):
            maps = w.reshape(w.shape[0], *loaded.image_shape)
        else:
            return None
        entry = _layer_label(name, layer)
        entry["shape"] = list(maps.shape)
        entry.update(_encode(maps, symmetric=True))
        return entry
    return None


def predict(loaded, image):
    """Everything the draw page shows for one preprocessed uint8 image (H, W)."""
    x = loaded.run.inputs(image[None])
    with LOCK:
        out, records = capture_activations(loaded.model, x)
    probs = tasks.for_model(models.OUTPUTS[loaded.name]).probabilities(out)[0]
    heads = probs if probs.ndim == 2 else probs[None]
    activations = [_activation_entry(name, layer, output) for name, layer, output in records
                   if isinstance(output, np.ndarray)
                   and _kind(layer) not in IDENTITY_LAYERS]
    return {"model": loaded.name, "two_digit": loaded.two_digit,
            "digits": [int(np.argmax(p)) for p in heads],
            "probabilities": [[float(v) for v in p] for p in heads],
            "image": encode_image(image),
            "activations": activations,
            "filters": filters(loaded)}
