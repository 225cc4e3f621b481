"""A run's settings: their names, checks and defaults, and the config a run is built from.

Settings carry the command line's names (``batch_size`` is ``--batch-size``). Messages name
them as keyword arguments (``lr=0.5``); the command line rewrites those as its flags.
"""
import math

from .. import backend, models, recipes
from ..checkpoint import CheckpointError
from ..data import DATASETS

TWO_DIGIT_DATASET = "two-digit"
# a dry run trains one epoch on this many batches and tests on this many
DRY_RUN_BATCHES = (4, 2)
# only the two-digit models (multimlp, multicnn) take these
TWO_DIGIT_SETTINGS = ("n_train", "n_test", "data_seed", "allow_pickle")
# what a resumed run may change without changing its numbers
RESUME_MAY_CHANGE = ("epochs", "data_dir", "limit_test", "n_test", "allow_pickle", "backend",
                     "download", "model")
DTYPES = ("float32", "float64")


class SettingsError(ValueError):
    """Settings that cannot be used: a bad value, a bad combination, or a run they contradict."""


def _check(ok, expected):
    def check(name, value):
        if isinstance(value, bool) or not ok(value):
            raise SettingsError(f"{name}={value!r}: expected {expected}")
        return value
    check.expected = expected
    return check


def _number(v):
    return isinstance(v, (int, float)) and math.isfinite(v)


def _choice(choices):
    def check(name, value):
        if value not in choices:
            raise SettingsError(f"{name}={value!r}: expected one of {', '.join(choices)}")
        return value
    return check


def _flag(name, value):
    if not isinstance(value, bool):
        raise SettingsError(f"{name}={value!r}: expected True or False")
    return value


def _text(name, value):
    if not isinstance(value, str) and not hasattr(value, "__fspath__"):
        raise SettingsError(f"{name}={value!r}: expected a path")
    return str(value)


def _scheduler(name, value):
    try:
        return recipes.parse_scheduler(value)
    except ValueError as e:
        shown = value if isinstance(value, str) else repr(value)
        raise SettingsError(f"{name}={shown}: {e}") from None


positive_int = _check(lambda v: isinstance(v, int) and v > 0, "a positive integer")
positive_float = _check(lambda v: _number(v) and v > 0, "a positive number")
nonneg_float = _check(lambda v: _number(v) and v >= 0, "a number >= 0")
fraction = _check(lambda v: _number(v) and 0 <= v < 1, "a fraction in [0, 1)")
seed_int = _check(lambda v: isinstance(v, int) and v >= 0, "a non-negative integer")

# name -> (check, default); a None default means "the recipe's" (or the data's)
TRAIN_SETTINGS = {
    "model": (_choice(models.names()), None),
    "epochs": (positive_int, None),
    "batch_size": (positive_int, None),
    "lr": (positive_float, None),
    "optimizer": (_choice(recipes.OPTIMIZERS), None),
    "momentum": (nonneg_float, None),
    "nesterov": (_flag, None),
    "weight_decay": (nonneg_float, None),
    "val_split": (fraction, None),
    "scheduler": (_scheduler, None),
    "seed": (seed_int, 1),
    "backend": (_choice(backend.BACKENDS), None),
    "dtype": (_choice(DTYPES), "float32"),
    "data_dir": (_text, None),
    "dataset": (_choice(sorted(DATASETS)), None),
    "limit_train": (positive_int, None),
    "limit_test": (positive_int, None),
    "n_train": (positive_int, None),
    "n_test": (positive_int, None),
    "data_seed": (seed_int, None),
    "allow_pickle": (_flag, False),
    "download": (_flag, False),
    "out": (_text, None),
    "dry_run": (_flag, False),
}
DATA_SETTINGS = ("data_dir", "dataset", "limit_test", "n_test", "data_seed", "allow_pickle",
                 "download")


def checked(settings, allowed=TRAIN_SETTINGS, what="train"):
    """``settings`` without the None values, each checked; SettingsError for a bad one."""
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise TypeError(f"{what}() got unexpected keyword arguments: {', '.join(unknown)}")
    return {k: TRAIN_SETTINGS[k][0](k, v) for k, v in settings.items()
            if v is not None and not (v is False and TRAIN_SETTINGS[k][1] is False)}


def two_digit(name):
    """True for the models that name two digits (multimlp, multicnn)."""
    return models.OUTPUTS[name] == "two_logits"


def reject_misplaced(given, name):
    """SettingsError when a setting in ``given`` does not apply to model ``name``."""
    misplaced = [k for k in TWO_DIGIT_SETTINGS if k in given]
    if misplaced and not two_digit(name):
        raise SettingsError(f"{misplaced[0]}= applies to the two-digit models (multimlp, "
                            f"multicnn) only, not {name}")
    if "dataset" in given and two_digit(name):
        raise SettingsError(f"dataset= does not apply to {name}: its images are made from MNIST "
                            f"digits (or read from data_dir=)")


def new_config(given):
    """The config of a new run: the model's recipe with ``given`` (checked settings) over it."""
    name = given.get("model")
    if name is None:
        raise SettingsError("train needs model=NAME (or resume=DIR)")
    reject_misplaced(given, name)
    recipe = recipes.resolve(name, **{k: given.get(k) for k in recipes.RECIPE_FIELDS
                                      if k != "normalize"})
    value = {k: given.get(k, default) for k, (_, default) in TRAIN_SETTINGS.items()}
    config = {"model": name, **recipes.as_config(recipe), "seed": value["seed"],
              "backend": value["backend"] or backend.get_backend(), "dtype": value["dtype"],
              "dataset": value["dataset"] or "mnist", "data_dir": value["data_dir"],
              "limit_train": value["limit_train"], "limit_test": value["limit_test"],
              "dry_run": value["dry_run"], "download": value["download"]}
    if two_digit(name):
        config.update(dataset=TWO_DIGIT_DATASET, n_train=value["n_train"] or 40000,
                      n_test=value["n_test"] or 4000,
                      data_seed=value["seed"] if value["data_seed"] is None
                      else value["data_seed"], allow_pickle=value["allow_pickle"])
    if value["dry_run"]:
        train_batches, test_batches = DRY_RUN_BATCHES
        config["epochs"] = 1
        config["limit_train"] = min(value["limit_train"] or math.inf,
                                    math.ceil(train_batches * recipe.batch_size
                                              / (1 - recipe.val_split)))
        config["limit_test"] = min(value["limit_test"] or math.inf,
                                   test_batches * recipe.batch_size)
    return config


def resumed_config(saved, given, source):
    """A resumed run's config: ``saved`` with the changes ``given`` allows (not ``epochs``:
    training sets that). SettingsError for any other setting that differs from the run's."""
    config = dict(saved)
    if given.get("model", config["model"]) != config["model"]:
        raise CheckpointError(f"{source} holds a {config['model']} model, not {given['model']}")
    reject_misplaced(given, config["model"])
    for name in sorted(set(given) - set(RESUME_MAY_CHANGE) - {"out"}):
        if given[name] != config.get(name):
            may = ", ".join(f"{k}=" for k in RESUME_MAY_CHANGE if k != "model")
            raise SettingsError(
                f"{name}={given[name]} differs from the resumed run's {config.get(name)}; a "
                f"resumed run keeps its settings (it may change only {may}, out=)")
    for name in ("data_dir", "limit_test", "backend", "n_test"):
        if name in given:
            config[name] = given[name]
    config["download"] = given.get("download", False)  # a permission each command gives anew
    if config["dataset"] == TWO_DIGIT_DATASET:
        config["allow_pickle"] = given.get("allow_pickle", False)
    return config
