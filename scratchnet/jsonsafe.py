"""Strict JSON: the run folder's files and the studio's answers never hold NaN or Infinity."""
import math


def finite(value):
    """``value`` with every NaN or infinite float, also inside dicts and lists, replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
