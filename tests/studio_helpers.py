"""Helpers for the studio's tests and screenshots: a real run (a model trained briefly through
the library, written as a run folder with checkpoint.npz, metrics.json and events.jsonl in the
agreed format), a server in a thread, and headless Chromium drawing on the page."""
import json
import math
import os
import shutil
import threading
import time

import numpy as np

from scratchnet import checkpoint, models, optim, recipes, tasks, training
from scratchnet import random as sn_random
from scratchnet.data import DataLoader, load_mnist, normalize

EVENT_EVERY = 10  # batches per batch event, as the run layer writes them


def append_event(folder, event):
    """Append one event to ``folder``/events.jsonl, as the training loop does."""
    event = {"time": time.time(), **event}
    with open(os.path.join(folder, "events.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(event) + "\n")
        f.flush()


def _norms(model):
    return {name: {"weight": float(np.linalg.norm(p.data)),
                   "grad": float(np.linalg.norm(p.grad)) if p.grad is not None else None}
            for name, p in model.named_parameters()}


def _finite(v):
    return v if isinstance(v, float) and math.isfinite(v) else None


def train_run(folder, name="mlp128", epochs=1, batches=None, seed=0, lr=None, limit_test=2000):
    """Train model ``name`` on MNIST (``batches`` per epoch, default all) with its recipe's
    optimizer and write the run folder; returns the test accuracy on ``limit_test`` images."""
    os.makedirs(folder, exist_ok=True)
    sn_random.manual_seed(seed)
    recipe = recipes.resolve(name, lr=lr)
    model = models.build(name)
    task = tasks.for_model(models.OUTPUTS[name])
    mean, std = recipe.normalize or (None, None)
    images, labels = load_mnist("train")
    x = normalize(images, mean, std, input_shape=model.input_shape)
    test_images, test_labels = load_mnist("test")
    test_images, test_labels = test_images[:limit_test], test_labels[:limit_test]
    x_test = normalize(test_images, mean, std, input_shape=model.input_shape)
    if recipe.optimizer == "sgd":
        optimizer = optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                              nesterov=recipe.nesterov)
    else:
        optimizer = optim.Adam(model.parameters(), lr=recipe.lr)
    loader = DataLoader(x, labels, recipe.batch_size, shuffle=True, rng=seed)
    per_epoch = min(batches or len(loader), len(loader))
    config = {"model": name, "optimizer": recipe.optimizer, "lr": recipe.lr,
              "batch_size": recipe.batch_size, "epochs": epochs, "dtype": "float32",
              "normalize": list(recipe.normalize) if recipe.normalize else None,
              "dataset": "mnist", "data_dir": None, "seed": seed}
    append_event(folder, {"type": "start", "model": name, "epochs": epochs,
                          "batches_per_epoch": per_epoch, "batch_size": recipe.batch_size,
                          "resumed": False, "config": config})
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        started = time.perf_counter()
        window = [0.0, 0, 0]  # loss sum, correct, samples since the last event
        totals = [0.0, 0, 0]
        for batch, (xb, yb) in enumerate(loader, start=1):
            out = model(xb)
            loss = task.loss(out, yb)
            optimizer.zero_grad()
            model.backward(task.backward())
            optimizer.step()
            correct = int(np.sum(task.predict(out) == yb))
            for acc in (window, totals):
                acc[0] += loss * len(yb)
                acc[1] += correct
                acc[2] += len(yb)
            if batch % EVENT_EVERY == 0 or batch == per_epoch:
                seconds = time.perf_counter() - started
                rate = totals[2] / max(seconds, 1e-9)
                left = (per_epoch - batch + (epochs - epoch) * per_epoch) * recipe.batch_size
                append_event(folder, {
                    "type": "batch", "epoch": epoch, "batch": batch, "batches": per_epoch,
                    "loss": window[0] / window[2], "accuracy": window[1] / window[2],
                    "lr": recipe.lr, "samples_per_s": rate, "eta_s": left / rate,
                    "norms": _norms(model)})
                window = [0.0, 0, 0]
            if batch == per_epoch:
                break
        result = training.evaluate(model, task, x_test, test_labels)
        record = {"epoch": epoch, "train_loss": totals[0] / totals[2],
                  "train_accuracy": totals[1] / totals[2], "val_loss": None,
                  "val_accuracy": None, "test_loss": _finite(result["loss"]),
                  "test_accuracy": result["accuracy"], "lr": recipe.lr,
                  "seconds": time.perf_counter() - started,
                  "samples_per_s": totals[2] / (time.perf_counter() - started)}
        history.append(record)
        meta = {"model": name, "config": config, "finished": epoch == epochs}
        checkpoint.save_checkpoint(os.path.join(folder, "checkpoint.npz"), meta,
                                   model.state_dict())
        append_event(folder, {"type": "epoch", **record})
    metrics = {"model": name, "config": config, "epochs": history,
               "test_loss": history[-1]["test_loss"],
               "test_accuracy": history[-1]["test_accuracy"]}
    with open(os.path.join(folder, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
    append_event(folder, {"type": "end", "status": "finished"})
    return history[-1]["test_accuracy"]


DIGIT_STROKES = {
    # strokes as lists of (x, y) in [0, 1] of the canvas, drawn the way a person writes
    "1": [[(0.5, 0.15), (0.5, 0.85)]],
    "0": [[(0.5, 0.15), (0.33, 0.25), (0.27, 0.5), (0.33, 0.75), (0.5, 0.85), (0.67, 0.75),
           (0.73, 0.5), (0.67, 0.25), (0.5, 0.15)]],
    "7": [[(0.25, 0.18), (0.75, 0.18), (0.45, 0.85)]],
    "4": [[(0.55, 0.15), (0.25, 0.6), (0.75, 0.6)], [(0.62, 0.35), (0.62, 0.88)]],
}


class ServerThread:
    """``scratchnet serve`` in a background thread on a free port; ``url``, ``stop()``."""

    def __init__(self, paths, host="127.0.0.1"):
        from scratchnet.studio import make_server
        self.server = make_server(paths, host=host, port=0)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        host, port = self.server.server_address[:2]
        self.url = f"http://{host}:{port}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def browser_missing():
    """Why headless Chromium cannot run here, or None when it can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.exists(path) or shutil.which(os.path.basename(path))):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return None


def start_browser(width=1280, height=800):
    """Headless Chromium through Debian's chromedriver (selenium's manager downloads nothing)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--hide-scrollbars",
                "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver_path = CHROMEDRIVER if os.path.exists(CHROMEDRIVER) else shutil.which("chromedriver")
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    # the viewport itself, not the window around it, is width x height
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    return driver


def draw(driver, canvas, strokes, pointer="mouse"):
    """Draw ``strokes`` ((x, y) in [0, 1]) on the canvas element with a mouse or a finger."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput
    width, height = canvas.size["width"], canvas.size["height"]
    kind = interaction.POINTER_TOUCH if pointer == "touch" else interaction.POINTER_MOUSE

    def offset(p):  # offsets count from the element's centre
        return round((p[0] - 0.5) * (width - 2)), round((p[1] - 0.5) * (height - 2))

    for stroke in strokes:
        actions = ActionBuilder(driver, mouse=PointerInput(kind, pointer), duration=10)
        actions.pointer_action.move_to(canvas, *offset(stroke[0])).pointer_down()
        for a, b in zip(stroke, stroke[1:]):
            for t in np.linspace(0, 1, 8)[1:]:
                actions.pointer_action.move_to(
                    canvas, *offset((a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)))
        actions.pointer_action.pointer_up()
        actions.perform()
