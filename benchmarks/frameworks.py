"""The sides being compared, each a model + loss + optimizer behind one ``train_step`` / ``infer``.

Sides: ``scratchnet-numba``, ``scratchnet-numpy``, ``torch-cpu`` and ``torch-cuda``. Every side
is built from the same initial state dict and gets its batches prepared once, up front, in its
own form (ndarray, CPU tensor sharing the ndarray's memory, or a tensor already on the GPU), so
timed steps contain no conversions.
"""
import numpy as np
import torch

from scratchnet import backend
from scratchnet.nn.module import backward_to_params

from . import machine, workload

SCRATCHNET = {"scratchnet-numba": "numba", "scratchnet-numpy": "numpy"}
TORCH = {"torch-cpu": "cpu", "torch-cuda": "cuda"}


def cuda_note():
    """None when torch can use a GPU, else the reason torch-cuda is skipped."""
    if torch.cuda.is_available():
        return None
    return (f"torch-cuda skipped: torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")


class ScratchnetSide:
    """A scratchnet model on one backend; OpenBLAS threads set for that backend on ``enter``."""

    def __init__(self, side, model_name, state, threads):
        self.name, self.backend = side, SCRATCHNET[side]
        self.model = workload.scratchnet_model(model_name, state)
        self.loss_fn, _ = workload.losses(model_name)
        self.opt = workload.scratchnet_optimizer(model_name, self.model.parameters())
        # numba: prange owns the cores, BLAS runs single-threaded inside it;
        # numpy: no other pool, so BLAS gets them all
        self.blas_threads = 1 if self.backend == "numba" else threads
        self.stepped = False
        self.compiled = False

    def enter(self):
        backend.set_backend(self.backend)
        machine.set_blas_threads(self.blas_threads)

    def sync(self):
        pass

    def to_input(self, x, y):
        return x, y

    def train_step(self, x, y):
        if not self.stepped:
            # as scratchnet.training does before its first step
            backend.ops().compile_ahead(self.model, x, self.opt, self._loss_gradient(y))
            self.stepped = True
        elif not self.compiled:
            # from the second step on, no compile helper shares the cores with the timed steps
            backend.ops().finish_compile_ahead()
            self.compiled = True
        out = self.model(x)
        loss = self.loss_fn(out, y)
        self.opt.zero_grad()
        # as the training loop does (and torch for an input that does not require grad)
        backward_to_params(self.model, self.loss_fn.backward())
        self.opt.step()
        return float(loss)

    def _loss_gradient(self, y):
        def loss(out):
            self.loss_fn(out, y)
            return self.loss_fn.backward()
        return loss

    def infer(self, x):
        return self.model(x)

    def train(self, mode=True):
        self.model.train(mode)


class TorchSide:
    """The torch twin on ``cpu`` or ``cuda``."""

    def __init__(self, side, model_name, state, threads):
        self.name, self.device = side, TORCH[side]
        self.model = workload.torch_model(model_name, state, self.device)
        _, self.loss_fn = workload.losses(model_name)
        self.opt = workload.torch_optimizer(model_name, self.model.parameters())

    def enter(self):
        pass

    def sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def to_input(self, x, y):
        return torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device)

    def train_step(self, x, y):
        self.opt.zero_grad()
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss

    def infer(self, x):
        with torch.no_grad():
            return self.model(x)

    def train(self, mode=True):
        self.model.train(mode)


def build(side, model_name, state, threads):
    cls = ScratchnetSide if side in SCRATCHNET else TorchSide
    return cls(side, model_name, state, threads)


def stack_inputs(side, xs, ys):
    """Per-batch inputs in ``side``'s own form, converted once before any timing."""
    return [side.to_input(np.ascontiguousarray(x), np.ascontiguousarray(y))
            for x, y in zip(xs, ys)]
