"""The studio in a real browser (headless Chromium): draw digits with the mouse and read the
answer, upload a file, and watch the training page follow a growing events.jsonl.

Needs Debian's ``chromium`` and ``chromium-driver`` and ``pip install selenium``; skips, saying
which is missing, where they cannot be installed.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image, ImageDraw

from scratchnet import checkpoint, models
from scratchnet import events as scratchnet_events
from tests.studio_helpers import (DIGIT_STROKES, ServerThread, append_event, browser_missing,
                                  draw, start_browser, train_run)

pytestmark = pytest.mark.skipif(browser_missing() is not None,
                                reason=f"no headless browser: {browser_missing()}")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL, BATCHES = "digitcnn", 300  # ~96% on the test set after these batches


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-runs")
    train_run(str(root / MODEL), MODEL, batches=BATCHES)
    two = models.build("multimlp")
    os.makedirs(root / "multimlp")
    checkpoint.save_checkpoint(
        str(root / "multimlp" / "checkpoint.npz"),
        {"model": "multimlp", "config": {"dtype": "float32", "normalize": None, "seed": 1,
                                         "n_test": 100}},
        two.state_dict())
    return root


@pytest.fixture(scope="module")
def studio(runs):
    server = ServerThread([str(runs)])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    driver = start_browser()
    yield driver
    driver.quit()


def wait_for(driver, condition, what, timeout=60):
    """Poll ``condition(driver)`` until truthy; fail naming ``what`` (and the page's error)."""
    end = time.time() + timeout
    while time.time() < end:
        value = condition(driver)
        if value:
            return value
        time.sleep(0.1)
    error = driver.execute_script(
        "const e = document.querySelector('[data-testid=error]'); return e && e.textContent")
    pytest.fail(f"timed out waiting for {what} (page error: {error!r})")


def by_testid(driver, testid):
    from selenium.webdriver.common.by import By
    return driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


def open_run(driver, studio, page, name):
    driver.get(f"{studio.url}/{page}")
    wait_for(driver, lambda d: d.execute_script(
        "return document.querySelector('#run-select').options.length > 0 && "
        "document.querySelector('#run-select').value"), "the run chooser")
    from selenium.webdriver.support.ui import Select
    select = Select(by_testid(driver, "run-select")[0])
    for option in select.options:
        if option.text.startswith(name):
            select.select_by_value(option.get_attribute("value"))
            return
    pytest.fail(f"no run {name} in the chooser: {[o.text for o in select.options]}")


def predicted(driver):
    return by_testid(driver, "prediction")[0].get_attribute("data-digit")


@pytest.mark.parametrize("digit", ["1", "0", "7"])
def test_drawing_a_digit_with_the_mouse_names_it(studio, browser, digit):
    open_run(browser, studio, "", MODEL)
    canvas = wait_for(browser, lambda d: by_testid(d, "draw-canvas"), "the canvas")[0]
    draw(browser, canvas, DIGIT_STROKES[digit])
    got = wait_for(browser, predicted, "a prediction")
    assert got == digit
    bars = by_testid(browser, "probability")
    assert len(bars) == 10
    values = [float(b.get_attribute("data-value")) for b in bars]
    assert abs(sum(values) - 1) < 1e-3 and max(values) == values[int(digit)]


def test_drawing_with_a_finger_works_too(studio, browser):
    open_run(browser, studio, "", MODEL)
    canvas = wait_for(browser, lambda d: by_testid(d, "draw-canvas"), "the canvas")[0]
    draw(browser, canvas, DIGIT_STROKES["1"], pointer="touch")
    assert wait_for(browser, predicted, "a prediction") == "1"


def test_every_layer_is_shown_one_picture_per_feature_map(studio, browser):
    open_run(browser, studio, "", MODEL)
    canvas = wait_for(browser, lambda d: by_testid(d, "draw-canvas"), "the canvas")[0]
    draw(browser, canvas, DIGIT_STROKES["1"])
    wait_for(browser, predicted, "a prediction")
    layers = by_testid(browser, "activations")[0]
    from selenium.webdriver.common.by import By
    blocks = layers.find_elements(By.CSS_SELECTOR, '[data-testid="layer"]')
    # digitcnn: conv, relu, pool twice; linear, relu, linear (flatten shows nothing new)
    assert len(blocks) == 9
    maps = [len(b.find_elements(By.CSS_SELECTOR, "canvas")) for b in blocks]
    assert maps == [32, 32, 32, 64, 64, 64, 1, 1, 1]
    filters = by_testid(browser, "filters")[0]
    assert len(filters.find_elements(By.CSS_SELECTOR, "canvas")) == 32
    # the picture the network saw is not empty
    lit = browser.execute_script(
        "const c = document.querySelector('[data-testid=seen-image]');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i] > 128; return n;")
    assert lit > 100


def test_clear_empties_the_canvas_and_the_answer(studio, browser):
    open_run(browser, studio, "", MODEL)
    canvas = wait_for(browser, lambda d: by_testid(d, "draw-canvas"), "the canvas")[0]
    draw(browser, canvas, DIGIT_STROKES["7"])
    wait_for(browser, predicted, "a prediction")
    by_testid(browser, "clear")[0].click()
    assert predicted(browser) is None
    ink = browser.execute_script(
        "const c = document.querySelector('[data-testid=draw-canvas]');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i] < 128; return n;")
    assert ink == 0


def test_uploading_an_image_file_names_the_digit(studio, browser, tmp_path):
    img = Image.new("RGB", (120, 160), "white")
    ImageDraw.Draw(img).line([(60, 20), (60, 140)], fill="navy", width=12)
    path = tmp_path / "one.jpg"
    img.save(path, "JPEG")
    open_run(browser, studio, "", MODEL)
    wait_for(browser, lambda d: by_testid(d, "upload"), "the upload input")[0].send_keys(str(path))
    assert wait_for(browser, predicted, "a prediction") == "1"


def test_the_answer_follows_a_new_checkpoint(studio, browser, runs):
    folder = runs / "watch"
    folder.mkdir()
    path = folder / "checkpoint.npz"
    shutil.copy(runs / MODEL / "checkpoint.npz", path)
    open_run(browser, studio, "", "watch")
    canvas = wait_for(browser, lambda d: by_testid(d, "draw-canvas"), "the canvas")[0]
    draw(browser, canvas, DIGIT_STROKES["1"])
    assert wait_for(browser, predicted, "a prediction") == "1"
    time.sleep(6)  # the page has noted the checkpoint's time
    ckpt = checkpoint.load_checkpoint(str(path))
    zeroed = {k: v * 0 for k, v in ckpt.model_state.items()}  # equal scores: argmax is 0
    checkpoint.save_checkpoint(str(path), ckpt.meta, zeroed)
    wait_for(browser, lambda d: predicted(d) == "0", "the answer of the new weights", 20)


def test_a_random_test_digit_is_drawn_and_named(studio, browser):
    open_run(browser, studio, "", MODEL)
    wait_for(browser, lambda d: by_testid(d, "random-test-digit"), "the button")[0].click()
    assert wait_for(browser, predicted, "a prediction") in list("0123456789")
    ink = browser.execute_script(
        "const c = document.querySelector('[data-testid=draw-canvas]');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i] < 128; return n;")
    assert ink > 1000


def test_a_two_digit_model_gets_a_tall_canvas_and_two_answers(studio, browser):
    open_run(browser, studio, "", "multimlp")
    wait_for(browser, lambda d: d.execute_script(
        "return document.querySelector('[data-testid=draw-canvas]').height === 360"),
        "the 42x28-shaped canvas")
    canvas = by_testid(browser, "draw-canvas")[0]
    width, height = int(canvas.get_attribute("width")), int(canvas.get_attribute("height"))
    assert height * 28 == width * 42  # the model's 42 x 28 shape
    draw(browser, canvas, [[(0.5, 0.1), (0.5, 0.4)], [(0.3, 0.6), (0.7, 0.6), (0.4, 0.9)]])
    got = wait_for(browser, predicted, "a prediction")
    assert len(got) == 2 and len(by_testid(browser, "prediction-head")) == 2


def test_the_training_page_follows_appended_events_without_a_reload(studio, browser, runs):
    folder = runs / "live"
    folder.mkdir()
    shutil.copy(runs / MODEL / "checkpoint.npz", folder / "checkpoint.npz")
    append_event(str(folder), {"type": "start", "model": MODEL, "epochs": 2,
                               "batches_per_epoch": 100, "batch_size": 64, "resumed": False,
                               "config": {"model": MODEL, "optimizer": "adam", "lr": 0.001,
                                          "batch_size": 64, "epochs": 2}})
    open_run(browser, studio, "train", "live")
    browser.execute_script("window.notReloaded = true;")
    wait_for(browser, lambda d: by_testid(d, "run-status")[0].text.lower() == "running",
             "the running status")
    norms = {"conv_layers.0.weight": {"weight": 3.0, "grad": 0.5}}
    for batch in (10, 20):
        append_event(str(folder), {"type": "batch", "epoch": 1, "batch": batch, "batches": 100,
                                   "loss": 1.0 / batch, "accuracy": 0.5, "lr": 0.001,
                                   "samples_per_s": 1000.0, "eta_s": 42.0, "norms": norms})
        wait_for(browser, lambda d: by_testid(d, "batch")[0].text == f"{batch} / 100",
                 f"batch {batch} on the page")
    assert by_testid(browser, "epoch")[0].text == "1 / 2"
    assert "conv_layers.0.weight" in by_testid(browser, "norms")[0].text
    append_event(str(folder), {"type": "epoch", "epoch": 1, "train_loss": 0.3,
                               "train_accuracy": 0.9, "val_loss": 0.25, "val_accuracy": 0.92})
    append_event(str(folder), {"type": "end", "status": "interrupted"})
    wait_for(browser, lambda d: by_testid(d, "run-status")[0].text.lower() == "interrupted",
             "the end of the run")
    assert browser.execute_script("return window.notReloaded === true")
    # the digits are re-drawn after each epoch and at the end: read them in one script
    flags, summary = wait_for(browser, lambda d: d.execute_script(
        "const ds = [...document.querySelectorAll('[data-testid=test-digit]')];"
        "return ds.length ? [ds.map((e) => e.dataset.correct),"
        "  document.getElementById('digits-summary').textContent] : null;"), "the test digits")
    assert len(flags) == 48
    wrong = flags.count("false")
    assert f"{wrong} mistakes" in summary or wrong == 24  # all mistakes shown, or 24 of them
    with open(folder / "events.jsonl") as f:
        count = sum(1 for line in f if json.loads(line))
    assert by_testid(browser, "status")[0].get_attribute("data-events") == str(count)


def test_a_finished_run_shows_its_whole_history(studio, browser):
    open_run(browser, studio, "train", MODEL)
    wait_for(browser, lambda d: by_testid(d, "run-status")[0].text.lower() == "finished",
             "the finished status")
    assert by_testid(browser, "batch")[0].text == f"{BATCHES} / {BATCHES}"
    # the loss chart has drawn pixels in the train colour (#4a55d8)
    drawn = browser.execute_script(
        "const c = document.querySelector('[data-testid=loss-chart]');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 0; i < d.length; i += 4)"
        "  n += Math.abs(d[i] - 74) < 30 && Math.abs(d[i+1] - 85) < 30 && d[i+2] > 180;"
        "return n;")
    assert drawn > 50


def test_a_run_started_after_the_page_opened_appears_and_is_followed(browser, tmp_path):
    """The learner's order: serve an empty folder, open the page, then start training."""
    server = ServerThread([str(tmp_path)])
    try:
        browser.get(f"{server.url}/train")
        wait_for(browser, lambda d: by_testid(d, "run-select")[0].text == "no runs found",
                 "the empty chooser")
        folder = tmp_path / "later"
        folder.mkdir()
        append_event(str(folder), {"type": "start", "model": MODEL, "epochs": 1,
                                   "batches_per_epoch": 20, "batch_size": 64,
                                   "resumed": False, "config": {"model": MODEL}})
        wait_for(browser, lambda d: by_testid(d, "run-status")[0].text.lower() == "running",
                 "the new run, chosen", 20)
        chooser = by_testid(browser, "run-select")[0]
        assert chooser.text == f"later · {MODEL} · running"
        append_event(str(folder), {"type": "end", "status": "failed"})
        wait_for(browser, lambda d: chooser.text == f"later · {MODEL} · failed",
                 "the chooser's status, updated", 20)
    finally:
        server.stop()


def test_the_training_page_follows_scratchnet_train_live(browser, tmp_path):
    """A real `scratchnet train` in another process: the page follows it while it runs
    (checked while the process is paused, so the page must match the log line for line),
    then shows it finished, all without a reload."""
    out = tmp_path / "live-train"
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen(
        [sys.executable, "-m", "scratchnet", "train", "--model", "mlp", "--epochs", "2",
         "--limit-train", "6000", "--limit-test", "500", "--no-progress", "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    server = ServerThread([str(tmp_path)])
    try:
        browser.get(f"{server.url}/train")
        browser.execute_script("window.notReloaded = true;")
        end = time.time() + 120
        while not any(e["type"] == "epoch" for e in _events(out)):
            assert proc.poll() is None and time.time() < end, proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGSTOP)  # hold training still in its second epoch
        try:
            events = _events(out)
            last = [e for e in events if e["type"] == "batch"][-1]
            wait_for(browser, lambda d: by_testid(d, "status")[0].get_attribute(
                "data-events") == str(len(events)), "the page to catch up with the log", 30)
            assert by_testid(browser, "run-status")[0].text.lower() == "running"
            assert by_testid(browser, "batch")[0].text == f"{last['batch']} / {last['batches']}"
            assert by_testid(browser, "epoch")[0].text == f"{last['epoch']} / 2"
            names = by_testid(browser, "norms")[0].text
            assert all(name in names for name in last["norms"])
        finally:
            proc.send_signal(signal.SIGCONT)
        assert proc.wait(120) == 0, proc.stderr.read()
        wait_for(browser, lambda d: by_testid(d, "run-status")[0].text.lower() == "finished",
                 "the finished run", 30)
        events = _events(out)
        last = [e for e in events if e["type"] == "batch"][-1]
        assert by_testid(browser, "batch")[0].text == f"{last['batches']} / {last['batches']}"
        assert by_testid(browser, "epoch")[0].text == "2 / 2"
        assert browser.find_element("id", "eta").text == "done"
        assert browser.execute_script("return window.notReloaded === true")
    finally:
        proc.kill()
        proc.wait()
        server.stop()


def _events(out):
    path = out / "events.jsonl"
    return scratchnet_events.read(path) if path.exists() else []
