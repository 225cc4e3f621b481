"""What is trained: each model's tutorial recipe, its loss, its optimizer and real MNIST batches.

Both frameworks are built from the same recipe (``scratchnet.recipes``), so a scratchnet side
and a torch side differ only in the library doing the arithmetic.
"""
import numpy as np
import torch

import scratchnet as sn
from scratchnet import recipes

INFERENCE_BATCH = 1000


def model_names():
    """The models benchmarked: those with a recipe that classify single MNIST digits.

    (The two-digit models, output "two_logits", train on their own data set.)
    """
    return [n for n in sn.models.names()
            if sn.models.OUTPUTS[n] in ("logits", "log_probs") and n in recipes.RECIPES]


def recipe(name):
    """The tutorial's ``Recipe`` for model ``name`` (batch size, optimizer, normalisation)."""
    return recipes.RECIPES[name]


def losses(name):
    """``(scratchnet loss, torch loss)``: NLL after a log_softmax output, else cross-entropy."""
    if sn.models.OUTPUTS[name] == "log_probs":
        return sn.nn.NLLLoss(), torch.nn.NLLLoss()
    return sn.nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()


def scratchnet_optimizer(name, params):
    return recipes.make_optimizer(recipe(name), params)


def torch_optimizer(name, params):
    """torch.optim's twin of the recipe's optimizer."""
    r = recipe(name)
    wd = recipes.DEFAULT_WEIGHT_DECAY[r.optimizer] if r.weight_decay is None else r.weight_decay
    if r.optimizer == "sgd":
        return torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, nesterov=r.nesterov,
                               weight_decay=wd)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
           "adadelta": torch.optim.Adadelta}[r.optimizer]
    return cls(params, lr=r.lr, weight_decay=wd)


def initial_state(name, seed):
    """A seeded scratchnet model's float32 state dict: the weights every side starts from."""
    sn.manual_seed(seed)
    return sn.models.build(name, dtype=np.float32).state_dict()


def scratchnet_model(name, state):
    model = sn.models.build(name, dtype=np.float32)
    model.load_state_dict(state)
    return model


def torch_model(name, state, device="cpu"):
    from reference import convert, models

    twin = convert.copy_to_torch(scratchnet_model(name, state), models.build(name, torch.float32))
    return twin.to(device)


def prepare(name, images, labels, normalize="recipe"):
    """uint8 images -> float32 model input (N, *input_shape) normalised as the recipe says."""
    mean_std = recipe(name).normalize if normalize == "recipe" else normalize
    mean, std = mean_std if mean_std else (None, None)
    shape = sn.models.build(name).input_shape
    return sn.data.normalize(images, mean, std, np.float32, input_shape=shape), labels


def mnist_batches(name, batch_size, n_batches, split="train", seed=0):
    """``n_batches`` distinct real MNIST batches: x (n_batches, B, *input_shape), y (n_batches, B).

    Fewer when the split holds fewer than ``n_batches · batch_size`` images.
    """
    images, labels = sn.data.load_mnist(split)
    count = min(n_batches * batch_size, len(images)) // batch_size * batch_size
    order = np.random.default_rng(seed).permutation(len(images))[:count]
    x, y = prepare(name, images[order], labels[order])
    return (x.reshape((-1, batch_size) + x.shape[1:]),
            np.ascontiguousarray(y.reshape(-1, batch_size), dtype=np.int64))
