"""Environment switches: ``SCRATCHNET_FUSION=0`` and the like turn a feature off."""
import os

__all__ = ["switched_on"]

OFF = ("0", "false", "no", "off")


def switched_on(variable):
    """False when the environment variable ``variable`` is 0, false, no or off (in any case);
    True otherwise, unset included."""
    return os.environ.get(variable, "1").strip().lower() not in OFF
