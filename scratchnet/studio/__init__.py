"""scratchnet studio: a local web page to draw a digit and look inside the network, and to
watch a run train, live.

    scratchnet serve                      # the runs in ./runs, at http://127.0.0.1:8000/
    scratchnet serve runs/lenet-1 my.pth  # run folders, folders of runs, checkpoints, .pt/.pth

Pages: ``/`` (draw) and ``/train`` (training). The JSON API they use, under ``/api/``
(runs are addressed by the opaque ``id`` the list gives, never by a path):

- ``GET /api/runs``: ``{"paths", "runs": [{"id", "name", "kind" ("run" | "checkpoint"),
  "model", "status", "epoch", "epochs", "test_accuracy", "updated", "has_checkpoint",
  "checkpoint_mtime", "has_events"}]}``, newest first.
- ``GET /api/runs/<id>``: the same summary plus ``config``, ``history`` (metrics.json's epoch
  records), ``test`` (final test metrics) and ``model_info`` (model, two_digit, image_shape,
  parameters, layers, normalization).
- ``GET /api/runs/<id>/events?since=N``: ``{"events": [...], "next": M, "more": bool}``: the
  events.jsonl objects from byte offset N (start at 0, then pass the ``next`` of the previous
  answer; ``more`` is true when the answer stopped short of the end, at 2 MB).
- ``GET /api/runs/<id>/test-digits``: the latest checkpoint on a fixed sample of 500 test
  images: ``{"accuracy", "evaluated", "misclassified", "checkpoint_mtime", "samples":
  [{"index", "image", "label", "predicted", "top", "correct"}]}`` (misclassified first).
- ``POST /api/runs/<id>/predict``: the body is an image file (PNG, JPEG, ...; at most 5 MB) or
  JSON ``{"pixels": [[0..255, ...], ...]}`` (a grayscale drawing, any size). Answers
  ``{"model", "two_digit", "digits", "probabilities" (one list of 10 per digit), "image"
  (what the network sees), "activations" (one entry per layer), "filters"}``. Images are
  ``{"shape", "data"}`` with data the base64 of uint8 row-major pixels; activations and
  filters carry ``data`` scaled to 0..255 from the ``min``..``max`` given with them.

Errors answer ``{"error": message}`` with a 4xx status (413 for oversized uploads and images).
"""
import argparse

__all__ = ["serve", "make_server", "add_parser", "main"]

DEFAULT_PATHS = ["./runs"]


def serve(paths=tuple(DEFAULT_PATHS), host="127.0.0.1", port=8000):
    """Serve the studio for the runs under ``paths`` on host:port until Ctrl-C (prints the URL)."""
    from . import server  # the web and imaging modules load only when serving
    server.serve(paths, host=host, port=port)


def make_server(paths, host="127.0.0.1", port=8000):
    """The studio's server for ``paths``, bound but not serving (port 0: any free port)."""
    from . import server
    return server.make_server(paths, host=host, port=port)


def add_parser(subparsers, **kwargs):
    """Add the ``serve`` command to ``subparsers`` (argparse); ``kwargs`` go to add_parser."""
    p = subparsers.add_parser(
        "serve", help="local web page: draw digits for a model, watch training live",
        description="Serve the studio: a page to draw a digit and see every layer's response,\n"
                    "and a page to watch runs train, live. PATH is a checkpoint (.npz,\n"
                    ".pt/.pth), a run folder, or a folder of run folders.", **kwargs)
    p.add_argument("paths", nargs="*", default=DEFAULT_PATHS, metavar="PATH",
                   help="checkpoints, run folders, or folders of runs")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; anything but loopback exposes your runs")
    p.add_argument("--port", type=_port, default=8000, help="TCP port (0: any free port)")
    p.set_defaults(func=main)
    return p


def _port(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {text!r}")
    return value


def main(args):
    """Run ``scratchnet serve`` with parsed ``args``; returns the exit code."""
    serve(args.paths, host=args.host, port=args.port)
    return 0
