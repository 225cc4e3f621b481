"""Helpers for the studio's tests and screenshots: a real run (a model trained briefly by
``scratchnet.train``, which writes checkpoint.npz, metrics.json and events.jsonl), events
appended by hand, a server in a thread, and headless Chromium drawing on the page."""
import json
import os
import shutil
import threading
import time

import numpy as np

import scratchnet
from scratchnet import recipes

def append_event(folder, event):
    """Append one event to ``folder``/events.jsonl as scratchnet.events writes them, so that a
    test can grow a log line by line."""
    event = {"time": time.time(), **event}
    with open(os.path.join(folder, "events.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(event) + "\n")
        f.flush()


def train_run(folder, name="mlp128", epochs=1, batches=None, seed=0, lr=None, limit_test=2000):
    """Train model ``name`` with its recipe through ``scratchnet.train`` (on the first
    ``batches`` batches' worth of MNIST's training images, default all, none held out), which
    writes the run folder; returns the test accuracy on ``limit_test`` images."""
    recipe = recipes.resolve(name)
    run = scratchnet.train(name, epochs=epochs, lr=lr, seed=seed, val_split=0.0,
                           limit_train=batches and batches * recipe.batch_size,
                           limit_test=limit_test, out=folder, no_progress=True)
    return run.test["test_accuracy"]


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
