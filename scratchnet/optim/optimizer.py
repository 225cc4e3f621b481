"""``Optimizer``: param groups, per-parameter state and state dicts in torch.optim's layout."""
import copy
import warnings
from collections import defaultdict

import numpy as np

from ..nn.parameter import Parameter

__all__ = ["Optimizer", "required"]


class _RequiredParameter:
    """Marks a hyperparameter every param group must give (torch.optim.optimizer.required)."""

    def __repr__(self):
        return "<required parameter>"


required = _RequiredParameter()


def _copy_value(value):
    return value.copy() if isinstance(value, np.ndarray) else copy.deepcopy(value)


class Optimizer:
    """Base class of SGD, Adam, AdamW and Adadelta, with torch.optim.Optimizer's bookkeeping.

    ``params`` is a list of Parameters (or ``(name, Parameter)`` pairs, as
    ``module.named_parameters()`` yields), or a list of dicts, each a param group with its own
    ``"params"`` and any hyperparameters overriding ``defaults``. ``state`` maps each Parameter
    to its optimizer state (filled lazily on its first step); ``param_groups`` is a list of
    dicts. Subclasses implement ``step()``.
    """

    def __init__(self, params, defaults):
        self.defaults = defaults
        if isinstance(params, (Parameter, np.ndarray)):
            raise TypeError("params argument given to the optimizer should be an iterable of "
                            f"Parameters or dicts, but got {type(params).__name__}")
        self.state = defaultdict(dict)
        self.param_groups = []
        param_groups = list(params)
        if len(param_groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for param_group in param_groups:
            self.add_param_group(param_group)

    def add_param_group(self, param_group):
        """Add a group of Parameters with its own hyperparameters (missing ones from defaults)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        param_group = dict(param_group)  # torch edits the caller's dict; we leave it alone
        params = param_group["params"]
        if isinstance(params, Parameter):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered collections, "
                            "but the ordering of parameters in sets will change between runs. "
                            "Please use a list instead.")
        params = list(params)
        names = [p[0] for p in params if isinstance(p, tuple)]
        params = [p[1] if isinstance(p, tuple) else p for p in params]
        if names:
            if len(names) != len(params):
                raise ValueError("all optimizer params should be with/without names. "
                                 "Some param names are missing")
            param_group["param_names"] = names
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError("optimizer can only optimize Parameters, but one of the params "
                                f"is {type(p).__name__}")
            if p.data.dtype.type not in (np.float32, np.float64):
                raise TypeError("optimizer can only optimize float32 or float64 Parameters, "
                                f"but one of the params is {p.data.dtype}")
        param_group["params"] = params
        for name, default in self.defaults.items():
            if default is required and name not in param_group:
                raise ValueError("parameter group didn't specify a value of required "
                                 f"optimization parameter {name}")
            param_group.setdefault(name, default)
        if len({id(p) for p in params}) != len(params):
            warnings.warn("optimizer contains a parameter group with duplicate parameters; "
                          "in future, this will cause an error", stacklevel=3)
        seen = set()
        for group in self.param_groups:
            seen.update(id(p) for p in group["params"])
            if ("param_names" in param_group) != ("param_names" in group):
                which = "with names" if "param_names" in param_group else "without names"
                raise ValueError("all optimizer param groups should be with/without names. "
                                 f"cannot add param group {which} to the optimizer")
        if any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(param_group)

    def zero_grad(self, set_to_none=True):
        """Clear the gradient of every optimized Parameter: to None (default) or to zeros."""
        for group in self.param_groups:
            for p in group["params"]:
                p.zero_grad(set_to_none)

    def step(self, closure=None):
        """Perform one optimization step; ``closure`` re-evaluates the loss and returns it."""
        raise NotImplementedError

    def state_dict(self):
        """The optimizer state as a dict in torch's layout, holding copies of every array.

        ``{"state": {index: {name: value}}, "param_groups": [{..., "params": [index, ...]}]}``,
        where index numbers the parameters across groups in order, as torch does.
        """
        param_mappings = {}
        start_index = 0
        param_groups = []
        for group in self.param_groups:
            packed = {k: _copy_value(v) for k, v in group.items() if k != "params"}
            for i, p in enumerate(group["params"], start_index):
                param_mappings.setdefault(id(p), i)
            packed["params"] = [param_mappings[id(p)] for p in group["params"]]
            start_index += len(packed["params"])
            param_groups.append(packed)
        state = {param_mappings[id(p)]: {k: _copy_value(v) for k, v in s.items()}
                 for p, s in self.state.items()}
        return {"state": state, "param_groups": param_groups}

    def load_state_dict(self, state_dict):
        """Load a dict from ``state_dict()`` (or torch's, with arrays), copying every array.

        Parameters are matched by position, as torch does. Array state is cast to each
        parameter's dtype, except ``step``, which stays a float32 scalar array.
        """
        groups = self.param_groups
        saved_groups = copy.deepcopy(state_dict["param_groups"])
        if len(groups) != len(saved_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(len(g["params"]) != len(s["params"]) for g, s in zip(groups, saved_groups)):
            raise ValueError("loaded state dict contains a parameter group that doesn't match "
                             "the size of optimizer's group")
        id_map = {}
        for g, s in zip(groups, saved_groups):
            id_map.update(zip(s["params"], g["params"]))
        state = defaultdict(dict)
        for k, v in state_dict["state"].items():
            if k not in id_map:
                raise KeyError(f"loaded state dict has state for parameter {k}, which is not in "
                               f"any parameter group")
            p = id_map[k]
            state[p] = {name: self._cast_state(name, value, p) for name, value in v.items()}
        new_groups = []
        for g, s in zip(groups, saved_groups):
            s["params"] = g["params"]
            if "param_names" in g and "param_names" not in s:
                s["param_names"] = g["param_names"]
            for name, default in self.defaults.items():
                s.setdefault(name, default)
            new_groups.append(s)
        self.state = state
        self.param_groups = new_groups

    @staticmethod
    def _cast_state(name, value, p):
        if value is None:
            return None
        if name == "step":
            return np.array(float(value), dtype=np.float32)
        return np.array(value, dtype=p.data.dtype)  # np.array copies (torch tensors too)

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(group):
                if key != "params":
                    lines.append(f"    {key}: {group[key]}")
        return "\n".join(lines) + "\n)"
