"""torch.nn.init's default initialisers, drawing from scratchnet's seeded generator."""
import math

import numpy as np

from .. import random as sn_random


def calculate_fan_in(shape):
    """fan_in of a weight shaped (out, in, *kernel): in × prod(kernel), as torch computes it."""
    if len(shape) < 2:
        raise ValueError("fan_in needs a weight with at least 2 dimensions")
    return int(shape[1] * np.prod(shape[2:], dtype=np.int64))


def kaiming_uniform(shape, a=0.0, dtype=np.float32, rng=None):
    """U(-bound, bound) with bound = gain·sqrt(3 / fan_in), gain = sqrt(2 / (1 + a²)).

    With torch's layer default a = √5 this is U(-1/√fan_in, 1/√fan_in).
    """
    rng = rng or sn_random.default_generator()
    fan_in = calculate_fan_in(shape)
    gain = math.sqrt(2.0 / (1.0 + a * a))
    bound = gain * math.sqrt(3.0 / fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def bias_uniform(shape, fan_in, dtype=np.float32, rng=None):
    """torch's default bias: U(-1/√fan_in, 1/√fan_in) (zeros bound when fan_in is 0)."""
    rng = rng or sn_random.default_generator()
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, size=shape).astype(dtype)
