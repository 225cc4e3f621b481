"""Make the README's studio screenshots (studio-draw.png, studio-train.png) in this folder.

    python docs/images/studio_screenshots.py RUN_FOLDER [DIGIT]

RUN_FOLDER is a trained run with events.jsonl (e.g. ``scratchnet train --model lenet --epochs 2
--out runs/lenet``); headless Chromium draws DIGIT (default 4) on the draw page, at 1280x800.
"""
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))

from tests.studio_helpers import DIGIT_STROKES, ServerThread, draw, start_browser  # noqa: E402


def wait_for(driver, script, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if driver.execute_script(script):
            return
        time.sleep(0.2)
    raise TimeoutError(script)


def main(run_folder, digit="4"):
    from selenium.webdriver.common.by import By
    server = ServerThread([run_folder])
    driver = start_browser()
    try:
        driver.get(server.url + "/")
        wait_for(driver, "return document.querySelector('#run-select').value !== ''")
        canvas = driver.find_element(By.CSS_SELECTOR, '[data-testid="draw-canvas"]')
        draw(driver, canvas, DIGIT_STROKES[digit])
        wait_for(driver, "return document.querySelector('[data-testid=prediction]')"
                         ".hasAttribute('data-digit')")
        time.sleep(0.5)
        driver.save_screenshot(os.path.join(HERE, "studio-draw.png"))
        driver.get(server.url + "/train")
        wait_for(driver, "return document.querySelectorAll('[data-testid=test-digit]').length > 0")
        time.sleep(1.5)
        driver.save_screenshot(os.path.join(HERE, "studio-train.png"))
    finally:
        driver.quit()
        server.stop()


if __name__ == "__main__":
    main(*sys.argv[1:])
