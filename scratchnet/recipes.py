"""Recipes: the hyperparameters each tutorial trains its model with.

``scratchnet train --model NAME`` starts from ``RECIPES[NAME]``; every command-line flag given
overrides one field (:func:`resolve`). ``normalize`` is ``(mean, std)`` applied to pixels scaled
to [0, 1], or None to feed the [0, 1] pixels as they are.
"""
import dataclasses
import inspect
from dataclasses import dataclass

from . import optim

OPTIMIZERS = ("sgd", "adam", "adamw", "adadelta")
DISPLAY_NAMES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "adadelta": "Adadelta"}
# torch.optim.AdamW defaults to weight_decay=0.01; the others to 0
DEFAULT_WEIGHT_DECAY = {"sgd": 0.0, "adam": 0.0, "adamw": 0.01, "adadelta": 0.0}


@dataclass(frozen=True)
class Recipe:
    """How one model is trained. ``weight_decay`` None means the optimizer's torch default."""

    optimizer: str
    lr: float
    batch_size: int
    epochs: int
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float | None = None
    normalize: tuple | None = None
    val_split: float = 0.0
    # a torch.optim.lr_scheduler class and its arguments, e.g. {"name": "StepLR",
    # "step_size": 1, "gamma": 0.7}, stepped once per epoch; None or {}: none
    scheduler: dict | None = None

    def describe(self):
        """One line, e.g. ``SGD lr 0.01 momentum 0.9 nesterov, batch 32, 10 epochs, ...``."""
        parts = [f"{DISPLAY_NAMES[self.optimizer]} lr {self.lr:g}"]
        if self.momentum:
            parts[0] += f" momentum {self.momentum:g}" + (" nesterov" if self.nesterov else "")
        if self.weight_decay:
            parts[0] += f" weight decay {self.weight_decay:g}"
        parts.append(f"batch {self.batch_size}")
        parts.append(f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}")
        parts.append(f"normalise {self.normalize}" if self.normalize else "pixels in [0, 1]")
        if self.scheduler:
            args = " ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in self.scheduler.items() if k != "name")
            parts[0] += f", {self.scheduler['name']} {args}".rstrip()
        if self.val_split:
            parts.append(f"{self.val_split:.0%} validation")
        return ", ".join(parts)


RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(Recipe))


RECIPES = {
    "digitcnn": Recipe("adam", lr=1e-3, batch_size=64, epochs=5, normalize=(0.5, 0.5)),
    "lenet": Recipe("sgd", lr=0.001, momentum=0.9, batch_size=50, epochs=5,
                    normalize=(0.1307, 0.3081)),
    "mlp": Recipe("sgd", lr=0.1, batch_size=32, epochs=10, val_split=0.1),
    "mlp128": Recipe("sgd", lr=0.1, batch_size=32, epochs=10, val_split=0.1),
    "mitxcnn": Recipe("sgd", lr=0.01, momentum=0.9, nesterov=True, batch_size=32, epochs=10,
                      val_split=0.1),
    "widecnn": Recipe("sgd", lr=0.01, momentum=0.95, batch_size=50, epochs=3),
    # MITx 6.86x project 2, two overlapping digits: its train_model's SGD, 10% dev split
    "multimlp": Recipe("sgd", lr=0.01, momentum=0.9, batch_size=64, epochs=10, val_split=0.1),
    "multicnn": Recipe("sgd", lr=0.01, momentum=0.9, batch_size=64, epochs=10, val_split=0.1),
    # pytorch/examples' mnist/main.py: Adadelta, the lr times 0.7 after every epoch
    "examplenet": Recipe("adadelta", lr=1.0, batch_size=64, epochs=14,
                         normalize=(0.1307, 0.3081),
                         scheduler={"name": "StepLR", "step_size": 1, "gamma": 0.7}),
}


def resolve(model, **overrides):
    """``RECIPES[model]`` with every override that is not None put in its place.

    Choosing another optimizer than the recipe's drops the recipe's SGD-only settings
    (momentum, nesterov) and its weight decay, unless those are overridden too.
    """
    if model not in RECIPES:
        raise ValueError(f"no recipe for model {model!r}: expected one of {', '.join(RECIPES)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(changes) - {f.name for f in dataclasses.fields(Recipe)}
    if unknown:
        raise TypeError(f"resolve: unknown recipe fields {sorted(unknown)}")
    if changes.get("optimizer", RECIPES[model].optimizer) not in OPTIMIZERS:
        raise ValueError(
            f"unknown optimizer {changes['optimizer']!r}: expected one of {', '.join(OPTIMIZERS)}")
    recipe = RECIPES[model]
    if changes.get("optimizer", recipe.optimizer) != recipe.optimizer:
        recipe = dataclasses.replace(recipe, momentum=0.0, nesterov=False, weight_decay=None)
    return dataclasses.replace(recipe, **changes)


def as_config(recipe):
    """The recipe's fields as JSON-ready config entries."""
    config = dataclasses.asdict(recipe)
    config["normalize"] = list(recipe.normalize) if recipe.normalize else None
    return config


def from_config(config):
    """The Recipe whose fields a run's config holds (fields it predates take their defaults)."""
    fields = {f: config[f] for f in RECIPE_FIELDS if f in config}
    if fields.get("normalize"):
        fields["normalize"] = tuple(fields["normalize"])
    return Recipe(**fields)


def make_optimizer(recipe, params):
    """The torch-equivalent optimizer ``recipe`` names, over ``params``."""
    wd = recipe.weight_decay
    if wd is None:
        wd = DEFAULT_WEIGHT_DECAY[recipe.optimizer]
    if recipe.optimizer == "sgd":
        return optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum,
                         nesterov=recipe.nesterov, weight_decay=wd)
    if recipe.momentum or recipe.nesterov:
        raise ValueError(f"momentum and nesterov apply to sgd only, not {recipe.optimizer}")
    cls = {"adam": optim.Adam, "adamw": optim.AdamW, "adadelta": optim.Adadelta}[recipe.optimizer]
    return cls(params, lr=recipe.lr, weight_decay=wd)


def parse_scheduler(spec):
    """A scheduler as recipes hold it, from ``"StepLR:step_size=1,gamma=0.7"`` (or ``"none"``,
    or such a dict already): {"name": class in scratchnet.optim.lr_scheduler, its arguments}.

    ValueError naming what is wrong: an unknown class or argument, a value that is no number.
    """
    if isinstance(spec, dict):
        args = dict(spec)
        name = args.pop("name", None)
    elif isinstance(spec, str) and spec.strip().lower() == "none":
        return {}
    elif isinstance(spec, str):
        name, _, rest = spec.partition(":")
        args = {}
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"expected NAME:ARG=VALUE,..., got {item!r}")
            args[key.strip()] = _number(value.strip())
    else:
        raise ValueError(f"scheduler: expected a dict or a string like "
                         f"'StepLR:step_size=1,gamma=0.7', got {spec!r}")
    if not spec:
        return {}
    names = [n for n in optim.lr_scheduler.__all__ if n != "LRScheduler"]
    if name not in names:
        raise ValueError(f"no scheduler {name!r}: expected one of {', '.join(names)}")
    try:
        inspect.signature(getattr(optim.lr_scheduler, name)).bind(None, **args)
    except TypeError as e:
        raise ValueError(f"{name}: {e}") from None
    return {"name": name, **args}


def _number(text):
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    if text.startswith("[") and text.endswith("]"):  # MultiStepLR's milestones=[5;10]
        return [_number(t) for t in text[1:-1].split(";") if t]
    if text in ("min", "max", "rel", "abs"):  # ReduceLROnPlateau's modes
        return text
    raise ValueError(f"{text!r} is not a number")


def make_scheduler(recipe, optimizer):
    """The torch-equivalent learning-rate scheduler ``recipe`` names over ``optimizer``, or None."""
    if not recipe.scheduler:
        return None
    args = dict(parse_scheduler(recipe.scheduler))
    return getattr(optim.lr_scheduler, args.pop("name"))(optimizer, **args)
