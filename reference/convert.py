"""Move weights and optimizer state between scratchnet and torch, both directions.

Weights: a scratchnet ``state_dict`` is name → ndarray, a torch one name → tensor, with the
same names. Optimizer state: both use torch's layout ``{"state": {index: {...}},
"param_groups": [...]}``; only the arrays/tensors (and Adam's ``step``) need converting.
"""
import numpy as np
import torch


def state_dict_to_torch(state_dict):
    """ndarray state dict -> tensor state dict (copies)."""
    return {k: torch.tensor(np.array(v)) for k, v in state_dict.items()}


def state_dict_from_torch(state_dict):
    """tensor state dict -> ndarray state dict (copies)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in state_dict.items()}


def copy_to_torch(sn_model, torch_model):
    """Load a scratchnet model's weights into its torch twin (cast to the twin's dtype)."""
    torch_model.load_state_dict(state_dict_to_torch(sn_model.state_dict()))
    return torch_model


def copy_from_torch(torch_model, sn_model):
    """Load a torch model's weights into its scratchnet twin (cast to the model's dtype)."""
    sn_model.load_state_dict(state_dict_from_torch(torch_model.state_dict()))
    return sn_model


def _map_state(opt_state, fn):
    return {
        "state": {idx: {name: fn(name, value) for name, value in s.items()}
                  for idx, s in opt_state["state"].items()},
        "param_groups": [dict(g) for g in opt_state["param_groups"]],
    }


def optimizer_state_to_torch(opt_state):
    """scratchnet optimizer ``state_dict()`` -> one ``torch.optim`` ``load_state_dict`` accepts."""
    def convert(name, value):
        if name == "step":
            return torch.tensor(float(value))
        return torch.tensor(np.array(value))
    return _map_state(opt_state, convert)


def optimizer_state_from_torch(opt_state):
    """``torch.optim`` ``state_dict()`` -> one scratchnet's optimizers load."""
    def convert(name, value):
        if name == "step":
            return float(value)
        if isinstance(value, torch.Tensor):
            return value.detach().cpu().numpy().copy()
        return value
    return _map_state(opt_state, convert)
