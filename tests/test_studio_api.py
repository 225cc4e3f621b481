"""scratchnet serve's JSON API, used as the page (or a script) uses it: a real server on a free
port, a model really trained for a few hundred batches, and every kind of bad request."""
import base64
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from scratchnet import checkpoint, cli, models, nn
from scratchnet import events as scratchnet_events
from scratchnet.run import Run
from scratchnet.studio import inference, testdigits
from scratchnet.studio import server as studio_server

from tests.studio_helpers import ServerThread, append_event, train_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """runs/mlp128 (trained 300 batches), runs/multimlp (untrained two-digit checkpoint), and
    a lone .pth state dict of the mlp128 weights next to them."""
    root = tmp_path_factory.mktemp("studio")
    runs = root / "runs"
    train_run(str(runs / "mlp128"), "mlp128", batches=300)
    two = models.build("multimlp")
    os.makedirs(runs / "multimlp")
    checkpoint.save_checkpoint(
        str(runs / "multimlp" / "checkpoint.npz"),
        {"model": "multimlp", "config": {"dtype": "float32", "normalize": None, "seed": 1,
                                         "data_seed": 1, "n_test": 200, "epochs": 1}},
        two.state_dict())
    ckpt = checkpoint.load_checkpoint(str(runs / "mlp128" / "checkpoint.npz"))
    checkpoint.save_torch_state_dict(str(root / "mlp128.pth"), ckpt.model_state)
    return root


@pytest.fixture(scope="module")
def studio(runs_dir):
    server = ServerThread([str(runs_dir / "runs"), str(runs_dir / "mlp128.pth")])
    yield server
    server.stop()


def request(studio, path, body=None, headers=None, method=None):
    """(status, headers, parsed JSON or raw bytes) of one request."""
    req = urllib.request.Request(studio.url + path, data=body, headers=headers or {},
                                 method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            status, head, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        status, head, raw = e.code, e.headers, e.read()
    if head.get("Content-Type", "").startswith("application/json"):
        return status, head, json.loads(raw)
    return status, head, raw


def run_id(studio, name):
    _, _, body = request(studio, "/api/runs")
    return next(r["id"] for r in body["runs"] if r["name"] == name)


def digit_png(digit="1", size=200, two=False):
    """A hand-drawn-looking digit, dark on white paper, as PNG bytes."""
    img = Image.new("L", (size, size * 3 // 2 if two else size), 255)
    d = ImageDraw.Draw(img)
    if digit == "1":
        d.line([(size // 2, size // 6), (size // 2, size * 5 // 6)], fill=0, width=size // 12)
    else:
        d.ellipse([size // 4, size // 6, size * 3 // 4, size * 5 // 6], outline=0,
                  width=size // 12)
    if two:
        d.line([(size // 2, size), (size // 2, size * 4 // 3)], fill=0, width=size // 12)
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def post_png(studio, rid, data, content_type="image/png"):
    return request(studio, f"/api/runs/{rid}/predict", data, {"Content-Type": content_type})


def raw_exchange(studio, data):
    """Send raw bytes on a fresh connection; the status line's code, or None if none came."""
    host, port = studio.server.server_address[:2]
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(data)
        reply = b""
        while b"\r\n" not in reply:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    return int(reply.split()[1]) if reply else None


def still_up(studio):
    status, _, body = request(studio, "/api/runs")
    return status == 200 and len(body["runs"]) == 3


# ----- runs, detail, events -----

def test_runs_lists_run_folders_and_lone_weight_files_under_opaque_ids(studio):
    status, _, body = request(studio, "/api/runs")
    assert status == 200
    by_name = {r["name"]: r for r in body["runs"]}
    assert set(by_name) == {"mlp128", "multimlp", "mlp128.pth"}
    assert by_name["mlp128"]["kind"] == "run" and by_name["mlp128.pth"]["kind"] == "checkpoint"
    assert by_name["mlp128"]["status"] == "finished" and by_name["mlp128"]["has_events"]
    for run in body["runs"]:
        assert len(run["id"]) == 12 and all(c in "0123456789abcdef" for c in run["id"])
        assert "path" not in run


def test_run_detail_names_the_model_and_its_history(studio):
    status, _, body = request(studio, f"/api/runs/{run_id(studio, 'mlp128')}")
    assert status == 200
    assert body["model_info"]["model"] == "mlp128"
    assert body["model_info"]["image_shape"] == [28, 28]
    assert [r["epoch"] for r in body["history"]] == [1]
    _, _, two = request(studio, f"/api/runs/{run_id(studio, 'multimlp')}")
    assert two["model_info"]["two_digit"] and two["model_info"]["image_shape"] == [42, 28]
    _, _, pth = request(studio, f"/api/runs/{run_id(studio, 'mlp128.pth')}")
    assert pth["model_info"]["model"] == "mlp128"  # inferred from the state dict's shapes


def test_events_are_read_incrementally_and_a_partial_last_line_waits(studio, runs_dir):
    rid = run_id(studio, "mlp128")
    _, _, first = request(studio, f"/api/runs/{rid}/events?since=0")
    kinds = [e["type"] for e in first["events"]]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("batch") == 30
    _, _, none = request(studio, f"/api/runs/{rid}/events?since={first['next']}")
    assert none == {"events": [], "next": first["next"], "more": False}
    folder = str(runs_dir / "runs" / "mlp128")
    append_event(folder, {"type": "batch", "epoch": 2, "batch": 10, "batches": 300,
                          "loss": 0.5, "accuracy": 0.9, "lr": 0.1, "samples_per_s": 1.0,
                          "eta_s": None, "norms": {}})
    with open(os.path.join(folder, "events.jsonl"), "a") as f:
        f.write('{"type": "batch", "epo')  # the writer is mid-line
    _, _, more = request(studio, f"/api/runs/{rid}/events?since={first['next']}")
    assert [e["epoch"] for e in more["events"]] == [2]
    with open(os.path.join(folder, "events.jsonl"), "a") as f:
        f.write('ch": 2, "batch": 20}\n')
    _, _, rest = request(studio, f"/api/runs/{rid}/events?since={more['next']}")
    assert rest["events"] == [{"type": "batch", "epoch": 2, "batch": 20}]


def test_a_run_silent_for_long_without_an_end_is_stale(studio, runs_dir):
    folder = runs_dir / "runs" / "crashed"
    folder.mkdir()
    append_event(str(folder), {"type": "start", "model": "lenet", "epochs": 1})
    try:
        _, _, body = request(studio, "/api/runs")
        assert next(r for r in body["runs"] if r["name"] == "crashed")["status"] == "running"
        old = time.time() - 3600
        os.utime(folder / "events.jsonl", (old, old))
        _, _, body = request(studio, "/api/runs")
        assert next(r for r in body["runs"] if r["name"] == "crashed")["status"] == "stale"
    finally:
        (folder / "events.jsonl").unlink()
        folder.rmdir()


def test_a_run_without_events_answers_an_empty_log(studio):
    _, _, body = request(studio, f"/api/runs/{run_id(studio, 'multimlp')}/events?since=0")
    assert body == {"events": [], "next": 0, "more": False}


def test_a_long_log_comes_in_chunks_that_join_up(studio, runs_dir, monkeypatch):
    from scratchnet.studio import runs
    rid = run_id(studio, "mlp128")
    _, _, whole = request(studio, f"/api/runs/{rid}/events?since=0")
    monkeypatch.setattr(runs, "EVENTS_CHUNK", 3000)
    events, since, chunks = [], 0, 0
    while True:
        _, _, part = request(studio, f"/api/runs/{rid}/events?since={since}")
        events += part["events"]
        since, chunks = part["next"], chunks + 1
        if not part["more"]:
            break
    assert events == whole["events"] and since == whole["next"] and chunks > 3


@pytest.mark.parametrize("query", ["since=-1", "since=abc", "since=1e3"])
def test_events_refuse_a_bad_cursor(studio, query):
    status, _, body = request(studio, f"/api/runs/{run_id(studio, 'mlp128')}/events?{query}")
    assert status == 400 and "since" in body["error"]


# ----- predict -----

def cli_probabilities(capsys, weights, image_path):
    """The probabilities `scratchnet predict` prints for one image (one row per digit)."""
    capsys.readouterr()
    assert cli.main(["predict", weights, image_path]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[1:]
    return [[float(v) for v in row.split()[-10:]] for row in rows]


def test_predict_an_uploaded_image_as_scratchnet_predict_does(studio, runs_dir, tmp_path, capsys):
    png = digit_png("1")
    status, _, body = post_png(studio, run_id(studio, "mlp128"), png)
    assert status == 200
    path = tmp_path / "one.png"
    path.write_bytes(png)
    expected = cli_probabilities(capsys, str(runs_dir / "runs" / "mlp128"), str(path))
    np.testing.assert_allclose(body["probabilities"], expected, atol=5e-5)
    assert body["digits"] == [int(np.argmax(expected[0]))]
    assert abs(sum(body["probabilities"][0]) - 1) < 1e-6
    seen = np.frombuffer(base64.b64decode(body["image"]["data"]), np.uint8)
    assert body["image"]["shape"] == [28, 28] and seen.size == 784 and seen.max() == 255


def test_predict_a_drawn_array_like_the_same_picture_as_a_file(studio):
    rid = run_id(studio, "mlp128")
    png = digit_png("0")
    pixels = np.asarray(Image.open(io.BytesIO(png))).tolist()
    _, _, from_file = post_png(studio, rid, png)
    status, _, from_array = request(studio, f"/api/runs/{rid}/predict",
                                    json.dumps({"pixels": pixels}).encode(),
                                    {"Content-Type": "application/json"})
    assert status == 200
    assert from_array["image"] == from_file["image"]
    np.testing.assert_allclose(from_array["probabilities"], from_file["probabilities"])


def test_predict_answers_every_layer_and_the_first_layers_weights(studio):
    _, _, body = post_png(studio, run_id(studio, "mlp128"), digit_png("1"))
    layers = [(a["name"], a["type"], a["shape"]) for a in body["activations"]]
    assert layers == [("0", "Linear", [128]), ("1", "LeakyReLU", [128]), ("2", "Linear", [10])]
    for a in body["activations"]:
        assert len(base64.b64decode(a["data"])) == np.prod(a["shape"]) and a["min"] <= a["max"]
    assert body["filters"]["shape"] == [128, 28, 28]  # Linear(784, 128)'s rows as images


def test_predict_with_a_torch_state_dict(studio):
    _, _, from_npz = post_png(studio, run_id(studio, "mlp128"), digit_png("1"))
    status, _, from_pth = post_png(studio, run_id(studio, "mlp128.pth"), digit_png("1"))
    assert status == 200
    np.testing.assert_allclose(from_pth["probabilities"], from_npz["probabilities"], atol=1e-6)


def test_two_digit_models_read_a_42_by_28_canvas_and_name_both_digits(studio):
    status, _, body = post_png(studio, run_id(studio, "multimlp"), digit_png("0", two=True))
    assert status == 200
    assert body["two_digit"] and body["image"]["shape"] == [42, 28]
    assert len(body["digits"]) == 2 and len(body["probabilities"]) == 2
    assert all(len(p) == 10 for p in body["probabilities"])


def png_declaring(width, height):
    """A valid 1x1 PNG whose header claims ``width`` x ``height`` (a decompression bomb)."""
    out = io.BytesIO()
    Image.new("L", (1, 1)).save(out, "PNG")
    data = bytearray(out.getvalue())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4:ihdr + 13]))
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def blank_png():
    out = io.BytesIO()
    Image.new("L", (100, 100), 255).save(out, "PNG")
    return out.getvalue()


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # what "huge" sends
@pytest.mark.parametrize("body, content_type, status, words", [
    (b"", "image/png", 400, "no image"),
    (b"this is not an image", "image/png", 400, "not an image"),
    (b"<?php evil(); ?>", "application/octet-stream", 400, "not an image"),
    (digit_png("1")[:60], "image/png", 422, "cannot read"),
    (png_declaring(30000, 30000), "image/png", 413, "too large"),
    (png_declaring(12000, 12000), "image/png", 413, "too large"),
    (png_declaring(5000, 4000), "image/png", 413, "too large"),
    (blank_png(), "image/png", 422, "blank"),
    (b"{not json", "application/json", 400, "JSON"),
    (b'{"image": 1}', "application/json", 400, "pixels"),
    (b'{"pixels": [1, 2, 3]}', "application/json", 400, "2-D"),
    (b'{"pixels": [[0, 300], [0, 0]]}', "application/json", 400, "0 to 255"),
    (b'{"pixels": [["a", "b"]]}', "application/json", 400, "numbers"),
    (b'{"pixels": [[0, 0], [0, 0]]}', "application/json", 422, "blank"),
], ids=["empty", "text", "script", "truncated", "bomb", "huge", "big", "blank", "bad-json",
        "no-pixels", "1-d", "too-bright", "strings", "blank-array"])
def test_predict_refuses_bad_uploads_with_a_4xx_and_stays_up(studio, body, content_type,
                                                             status, words):
    got, _, answer = post_png(studio, run_id(studio, "mlp128"), body, content_type)
    assert got == status, answer
    assert words.lower() in answer["error"].lower()
    assert still_up(studio)


def test_an_oversized_upload_is_refused_before_it_is_read(studio):
    rid = run_id(studio, "mlp128")
    head = (f"POST /api/runs/{rid}/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: image/png\r\nContent-Length: {studio_server.MAX_UPLOAD + 1}\r\n\r\n")
    assert raw_exchange(studio, head.encode()) == 413
    assert raw_exchange(studio, head.encode() + b"\0" * 65536) == 413
    assert still_up(studio)


def test_a_post_without_a_length_or_with_a_broken_request_line_gets_a_4xx(studio):
    rid = run_id(studio, "mlp128")
    no_length = f"POST /api/runs/{rid}/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    assert raw_exchange(studio, no_length.encode()) == 411
    chunked = (f"POST /api/runs/{rid}/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert raw_exchange(studio, chunked.encode()) == 411
    assert raw_exchange(studio, b"NONSENSE\r\n\r\n") == 400
    assert raw_exchange(studio, b"\x16\x03\x01\x00\xa5\x01\xff" * 20 + b"\r\n\r\n") == 400
    assert still_up(studio)


def test_predict_on_a_run_without_a_checkpoint_says_so(studio, runs_dir):
    folder = runs_dir / "runs" / "starting"
    folder.mkdir()
    append_event(str(folder), {"type": "start", "model": "lenet", "epochs": 1})
    rid = run_id(studio, "starting")
    status, _, body = post_png(studio, rid, digit_png("1"))
    assert status == 409 and "no checkpoint" in body["error"]
    status, _, body = request(studio, f"/api/runs/{rid}/test-digits")
    assert status == 409
    folder.joinpath("events.jsonl").unlink()
    folder.rmdir()


def test_concurrent_predictions_all_get_the_same_right_answer(studio):
    rid = run_id(studio, "mlp128")
    png = digit_png("1")
    _, _, expected = post_png(studio, rid, png)
    answers = []

    def ask():
        answers.append(post_png(studio, rid, png))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(answers) == 8
    for status, _, body in answers:
        assert status == 200 and body["probabilities"] == expected["probabilities"]
        assert len(body["activations"]) == len(expected["activations"])


# ----- test digits -----

def test_test_digits_evaluate_the_latest_checkpoint_and_follow_it(studio, runs_dir):
    rid = run_id(studio, "mlp128")
    status, _, body = request(studio, f"/api/runs/{rid}/test-digits")
    assert status == 200
    assert body["evaluated"] == 500 and 0.5 < body["accuracy"] <= 1
    samples = body["samples"]
    wrong = [s for s in samples if not s["correct"]]
    assert body["misclassified"] == round(500 * (1 - body["accuracy"]))
    assert samples[:len(wrong)] == wrong  # mistakes first
    for s in samples:
        assert s["correct"] == (s["predicted"] == s["label"])
        assert s["top"][0][0][0] == s["predicted"][0]
    # a new checkpoint (weights zeroed: every digit gets the same scores) is evaluated anew
    path = str(runs_dir / "runs" / "mlp128" / "checkpoint.npz")
    ckpt = checkpoint.load_checkpoint(path)
    saved = open(path, "rb").read()
    try:
        zeroed = {k: np.zeros_like(v) for k, v in ckpt.model_state.items()}
        time.sleep(0.01)
        checkpoint.save_checkpoint(path, ckpt.meta, zeroed)
        _, _, after = request(studio, f"/api/runs/{rid}/test-digits")
        assert after["checkpoint_mtime"] > body["checkpoint_mtime"]
        assert all(s["predicted"] == [0] for s in after["samples"])
    finally:
        with open(path, "wb") as f:
            f.write(saved)


def test_test_digits_of_a_two_digit_model(studio, runs_dir):
    status, _, body = request(studio, f"/api/runs/{run_id(studio, 'multimlp')}/test-digits")
    assert status == 200 and body["evaluated"] == 200
    assert all(len(s["label"]) == 2 and s["image"]["shape"] == [42, 28] for s in body["samples"])
    # the run's own test set, the one `scratchnet evaluate` scores it on
    images, labels = Run.load(runs_dir / "runs" / "multimlp").test_set()
    for s in body["samples"]:
        assert s["label"] == labels[s["index"]].tolist()
        assert base64.b64decode(s["image"]["data"]) == images[s["index"]].tobytes()


def test_a_checkpoint_from_before_dtype_and_normalize_were_saved_takes_the_recipes(runs_dir,
                                                                                  tmp_path):
    run = Run.load(runs_dir / "runs" / "mlp128")
    ckpt = checkpoint.load_checkpoint(str(run.checkpoint_file))
    old = tmp_path / "old.npz"
    checkpoint.save_checkpoint(str(old), {"model": "mlp128", "config": {}}, ckpt.model_state)
    loaded = inference.load(str(old))
    assert loaded.config["dtype"] == "float32" and loaded.model.dtype == np.float32
    assert loaded.config["normalize"] == run.config["normalize"]  # the recipe's, as trained
    images = np.stack([np.frombuffer(base64.b64decode(s["image"]["data"]), np.uint8)
                       .reshape(28, 28) for s in testdigits.evaluate(str(old))["samples"][:8]])
    np.testing.assert_array_equal(inference.probabilities(loaded, images), run.predict(images))


def _get(server, path):
    status, _, body = request(server, path)
    assert status == 200, body
    return body


def _all_events(server, rid):
    events, since = [], 0
    while True:
        body = _get(server, f"/api/runs/{rid}/events?since={since}")
        events += body["events"]
        since = body["next"]
        if not body["more"]:
            return events


def test_a_run_written_by_scratchnet_train_is_served(tmp_path, capsys):
    """`scratchnet train` writes the log the training page reads; the API serves it as written,
    and a resumed run's log goes on in the same file."""
    out = tmp_path / "runs" / "mlp-short"
    assert cli.main(["train", "--model", "mlp", "--epochs", "1", "--limit-train", "2000",
                     "--limit-test", "500", "--no-progress", "--backend", "numpy",
                     "--out", str(out)]) == 0
    server = ServerThread([str(tmp_path / "runs")])
    try:
        (run,) = _get(server, "/api/runs")["runs"]
        metrics = json.loads((out / "metrics.json").read_text())
        assert (run["model"], run["status"], run["epoch"], run["epochs"]) == ("mlp", "finished",
                                                                            1, 1)
        assert run["test_accuracy"] == metrics["test_accuracy"]
        assert run["has_events"] and run["has_checkpoint"]
        events = _all_events(server, run["id"])
        assert events == scratchnet_events.read(out / "events.jsonl")  # as the run layer reads
        start, *middle, epoch, end = events
        assert start["type"] == "start" and start["model"] == "mlp" and not start["resumed"]
        assert start["epochs"] == 1 and start["config"] == metrics["config"]
        assert end == {"type": "end", "time": end["time"], "status": "finished"}
        batches = [e for e in middle if e["type"] == "batch"]
        assert batches == middle and batches
        per_epoch = start["batches_per_epoch"]
        assert [b["batch"] for b in batches] == [*range(10, per_epoch, 10), per_epoch]
        ckpt = checkpoint.load_checkpoint(str(out / "checkpoint.npz"))
        for b in batches:
            assert b["epoch"] == 1 and b["batches"] == per_epoch
            assert 0 < b["loss"] and 0 <= b["accuracy"] <= 1 and b["lr"] == metrics["config"]["lr"]
            assert set(b["norms"]) == set(ckpt.model_state)
            assert all(v["grad"] > 0 and v["weight"] > 0 for v in b["norms"].values())
        assert batches[-1]["eta_s"] == 0 and batches[-1]["samples_per_s"] > 0
        for name, value in ckpt.model_state.items():  # the last norms are the saved weights'
            assert batches[-1]["norms"][name]["weight"] == pytest.approx(
                float(np.linalg.norm(value.astype(np.float64))), rel=1e-9)
        assert epoch["type"] == "epoch"
        assert {k: v for k, v in epoch.items() if k not in ("type", "time")} == \
            metrics["epochs"][0]
        assert epoch["val_loss"] is not None  # mlp's recipe holds out a validation set
        detail = _get(server, f"/api/runs/{run['id']}")
        assert detail["history"] == metrics["epochs"] and detail["config"] == metrics["config"]
        assert detail["test"]["test_accuracy"] == metrics["test_accuracy"]
        info = detail["model_info"]
        assert (info["model"], info["two_digit"], info["image_shape"]) == ("mlp", False, [28, 28])
        assert info["parameters"] == sum(v.size for v in ckpt.model_state.values())
        assert info["normalization"] == metrics["config"]["normalize"]
        digits = _get(server, f"/api/runs/{run['id']}/test-digits")
        assert digits["evaluated"] == 500 and len(digits["samples"]) == 48

        assert cli.main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
        (run,) = _get(server, "/api/runs")["runs"]
        assert (run["status"], run["epoch"], run["epochs"]) == ("finished", 2, 2)
        events = _all_events(server, run["id"])
        starts = [e for e in events if e["type"] == "start"]
        assert [s["resumed"] for s in starts] == [False, True] and starts[1]["epochs"] == 2
        assert [e["epoch"] for e in events if e["type"] == "epoch"] == [1, 2]
        assert [e["status"] for e in events if e["type"] == "end"] == ["finished", "finished"]
        assert _get(server, f"/api/runs/{run['id']}")["history"] == \
            json.loads((out / "metrics.json").read_text())["epochs"]
    finally:
        server.stop()


def test_a_run_in_its_first_epoch_is_listed_before_its_first_checkpoint(studio, runs_dir):
    folder = runs_dir / "runs" / "first-epoch"
    folder.mkdir()
    try:
        assert "first-epoch" not in [r["name"] for r in request(studio, "/api/runs")[2]["runs"]]
        append_event(str(folder), {"type": "start", "model": "lenet", "epochs": 3})
        _, _, body = request(studio, "/api/runs")
        run = next(r for r in body["runs"] if r["name"] == "first-epoch")
        assert (run["status"], run["model"], run["has_checkpoint"]) == ("running", "lenet", False)
        assert body["runs"][0]["name"] == "first-epoch"  # the newest first
    finally:
        folder.joinpath("events.jsonl").unlink()
        folder.rmdir()


# ----- pages, static files, safety -----

def test_pages_and_assets_are_served_from_the_package(studio):
    status, head, page = request(studio, "/")
    assert status == 200 and head["Content-Type"].startswith("text/html")
    assert b'data-testid="draw-canvas"' in page and b"https://" not in page
    status, _, page = request(studio, "/train")
    assert status == 200 and b'data-testid="test-digits"' in page
    status, head, css = request(studio, "/static/studio.css")
    assert status == 200 and head["Content-Type"].startswith("text/css")
    assert "default-src 'self'" in head["Content-Security-Policy"]
    assert head["X-Content-Type-Options"] == "nosniff"
    static = os.path.join(os.path.dirname(studio_server.__file__), "static")
    for name in os.listdir(static):  # no asset reaches out to the network
        text = open(os.path.join(static, name), encoding="utf-8").read()
        assert "http://" not in text and "https://" not in text, name


@pytest.mark.parametrize("path", [
    "/static/../server.py", "/static/..%2fserver.py", "/static/%2e%2e/__init__.py",
    "/static//etc/passwd", "/../../etc/passwd", "/api/runs/../../etc/passwd",
    "/api/runs/%2e%2e%2f%2e%2e", "/api/runs/0123456789ab", "/api/runs/ABCDEF012345",
    "/api/runs/5cbe94310d62/../../x", "/nothing", "/static/",
])
def test_nothing_outside_the_assets_and_found_runs_is_reachable(studio, path):
    status, _, body = request(studio, path)
    assert status == 404 and "error" in body


def test_methods_and_hosts_that_are_refused(studio):
    rid = run_id(studio, "mlp128")
    assert request(studio, f"/api/runs/{rid}/predict")[0] == 405
    assert request(studio, "/api/runs", b"x", method="PUT")[0] == 405
    assert request(studio, "/api/runs", b"x", {"Content-Type": "image/png"})[0] == 405
    assert request(studio, "/draw", b"x", {"Content-Type": "image/png"})[0] == 404
    assert raw_exchange(studio, b"BREW /api/runs HTTP/1.1\r\nHost: localhost\r\n\r\n") == 501
    status, _, body = request(studio, "/api/runs", headers={"Host": "evil.example:8000"})
    assert status == 403 and "Host" in body["error"]
    assert request(studio, "/api/runs", headers={"Host": "localhost"})[0] == 200


def test_capture_activations_records_every_layer_of_every_model_and_restores_them():
    functions = {f: getattr(nn.functional, f) for f in inference.SHOWN_FUNCTIONS}
    for name in models.names():
        model = models.build(name).eval()
        x = np.random.default_rng(0).standard_normal((2, *model.input_shape)).astype(np.float32)
        expected = model(x)
        out, records = inference.capture_activations(model, x)
        leaves = inference._leaf_layers(model)
        layers = [r for r in records if not isinstance(r[1], inference.FunctionCall)]
        assert len(layers) == len(leaves), name  # each layer called once
        assert {id(layer) for _, layer, _ in layers} == {id(layer) for _, layer in leaves}
        assert {f: getattr(nn.functional, f) for f in functions} == functions
        if isinstance(expected, tuple):
            for a, b in zip(out, expected):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
            if isinstance(model, nn.Sequential):  # its output is its last layer's
                np.testing.assert_allclose(records[-1][2], expected, rtol=1e-5, atol=1e-6)
        assert all("forward" not in layer.__dict__ for _, layer in leaves), name


def test_the_functional_ops_a_forward_calls_are_shown_too():
    """lenet's forward is conv1, F.max_pool2d, F.relu, ...: the pooled and rectified maps are
    the model's own (its output follows from the last one)."""
    model = models.build("lenet").eval()
    x = np.random.default_rng(1).standard_normal((1, 1, 28, 28)).astype(np.float32)
    out, records = inference.capture_activations(model, x)
    assert [name for name, _, _ in records] == [
        "conv1", "F.max_pool2d", "F.relu", "conv2", "F.max_pool2d", "F.relu", "fc1", "F.relu",
        "fc2"]
    conv1, pool, relu = (r[2] for r in records[:3])
    np.testing.assert_array_equal(pool, conv1.reshape(1, 10, 12, 2, 12, 2).max(axis=(3, 5)))
    np.testing.assert_array_equal(relu, np.maximum(pool, 0))
    shift = records[-1][2] - out  # log_softmax: the logits less one constant per row
    np.testing.assert_allclose(shift, np.repeat(shift[:, :1], 10, axis=1), atol=1e-5)


def test_capture_activations_uses_forward_hooks_where_layers_have_them():
    model = models.build("lenet").eval()
    removed = []

    class Handle:
        def remove(self):
            removed.append(1)

    hooked = model.conv1
    hooks = []
    hooked.register_forward_hook = lambda hook: hooks.append(hook) or Handle()
    real_forward = type(hooked).forward
    type_forward_calls = []

    def forward(x):
        out = real_forward(hooked, x)
        type_forward_calls.append(1)
        for hook in hooks:
            hook(hooked, (x,), out)
        return out

    hooked.__dict__["forward"] = forward
    x = np.zeros((1, 1, 28, 28), np.float32)
    _, records = inference.capture_activations(model, x)
    assert [r[0] for r in records].count("conv1") == 1
    assert removed == [1] and type_forward_calls == [1]


# ----- the command -----

def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_serve_prints_the_url_serves_and_stops_cleanly_on_ctrl_c(runs_dir):
    env = {**os.environ, "PYTHONPATH": ROOT}
    for host, warns in (("127.0.0.1", False), ("0.0.0.0", True)):
        # Ctrl-C reaches the server even when this test runs as a background job (whose
        # SIGINT is ignored, which a child would inherit)
        proc = subprocess.Popen([sys.executable, "-m", "scratchnet", "serve",
                                 str(runs_dir / "runs"), "--host", host, "--port", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, preexec_fn=_default_sigint)
        try:
            lines = [proc.stdout.readline() for _ in range(2)]
            url = lines[1].split()[1]
            port = url.rstrip("/").rsplit(":", 1)[1]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/runs", timeout=30) as r:
                assert r.status == 200
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        assert "2 run(s)" in lines[0] and url.startswith("http://")
        assert "stopped" in out and "Traceback" not in err
        assert ("warning" in err and "not loopback" in err) == warns


def test_serve_command_line_arguments():
    import argparse
    from scratchnet import studio
    parser = argparse.ArgumentParser()
    studio.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve"])
    assert (args.paths, args.host, args.port, args.func) == (["./runs"], "127.0.0.1", 8000,
                                                              studio.main)
    args = parser.parse_args(["serve", "a", "b.pth", "--host", "0.0.0.0", "--port", "0"])
    assert (args.paths, args.host, args.port) == (["a", "b.pth"], "0.0.0.0", 0)
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--port", "70000"])


def test_serve_is_a_command_of_scratchnet(capsys, studio):
    assert cli.main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: scratchnet serve") and "--port" in out and "PATH" in out
    assert cli.main(["--help"]) == 0 and "serve" in capsys.readouterr().out
    assert cli.main(["serve", "--port", "http"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected a port number" in err
    port = studio.server.server_address[1]
    assert cli.main(["serve", ".", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"scratchnet: error: cannot listen on 127.0.0.1:{port} (")
    assert err.count("\n") == 1


def test_a_busy_port_is_one_clear_error(studio):
    port = studio.server.server_address[1]
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
        studio_server.make_server(["."], port=port)
