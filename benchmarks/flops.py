"""Work per sample, counted from layer shapes: FLOPs = 2 × multiply-adds of convs and linears.

Forward: conv ``2·F·(C/groups)·KH·KW·OH·OW``, linear ``2·in·out`` (bias adds, activations
and pooling are a rounding error next to these and are not counted). Training: each weighted layer
also runs two backward GEMMs of the forward's size (dW and dX), except that the layer reading
the input needs no dX: ``3 × forward − that layer's forward``. PERF_NOTES' table (digitcnn 5.06
MFLOP forward, 14.8 training) is this count.
"""
import torch
from torch import nn

from . import workload


def _layer_flops(module, inputs, out):
    if isinstance(module, nn.Conv2d):
        c_in = module.in_channels // module.groups
        kh, kw = module.kernel_size
        return 2 * out[0].numel() * c_in * kh * kw
    return 2 * module.in_features * module.out_features


def count(model_name):
    """``{"forward": FLOPs per sample, "training": FLOPs per sample, "layers": [...]}``."""
    twin = workload.torch_model(model_name, workload.initial_state(model_name, 0)).eval()
    x = torch.zeros((1,) + tuple(twin.input_shape))
    layers = []

    def hook(module, inputs, out):
        layers.append({"layer": type(module).__name__, "forward": _layer_flops(module, inputs, out),
                       "reads_input": inputs[0] is x})

    handles = [m.register_forward_hook(hook) for m in twin.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            twin(x)
    finally:
        for h in handles:
            h.remove()
    forward = sum(layer["forward"] for layer in layers)
    no_dx = sum(layer["forward"] for layer in layers if layer["reads_input"])
    return {"forward": forward, "training": 3 * forward - no_dx, "layers": layers}
