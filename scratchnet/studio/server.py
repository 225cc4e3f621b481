"""The studio's HTTP server: its own static pages, and the JSON API they call.

The standard library's ``ThreadingHTTPServer`` (one thread per request) is enough for one
person's browser, needs no dependency, and keeps the whole request path readable here.
"""
import http.server
import ipaddress
import json
import re
import socket
import sys
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from .. import checkpoint
from ..jsonsafe import finite
from . import inference, runs, testdigits

MAX_UPLOAD = 5 * 1024 * 1024  # bytes of one request body
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml",
                ".png": "image/png"}
PAGES = {"/": "draw.html", "/draw": "draw.html", "/train": "train.html"}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
_RUN_PATH = re.compile(r"^/api/runs/([0-9a-f]{12})(/[a-z-]+)?$")


class HTTPError(Exception):
    """An error answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def _static_files():
    """Every file of the package's static folder, by name: the only files the server sends."""
    folder = resources.files(__package__) / "static"
    files = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in STATIC_TYPES:
            files[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return files


def is_loopback(host):
    """True for the names and addresses that only this machine can reach."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False



class Studio:
    """What the server knows: the paths it was given, the runs found there, its static files."""

    def __init__(self, paths, loopback_only=True):
        self.paths = [str(p) for p in paths]
        self.loopback_only = loopback_only
        self.static = _static_files()
        self._runs = {}

    def runs(self):
        """Look again (runs appear while the server is up) and return them by id."""
        self._runs = runs.discover(self.paths)
        return self._runs

    def run(self, run_id):
        run = self._runs.get(run_id) or self.runs().get(run_id)
        if run is None:
            raise HTTPError(404, f"no run with id {run_id!r}; GET /api/runs lists them")
        return run

    def loaded(self, run):
        if run.checkpoint is None:
            raise HTTPError(409, f"run {run.name!r} has no checkpoint yet (it is written at "
                                 f"the end of the first epoch)")
        try:
            return inference.load(run.checkpoint)
        except (checkpoint.CheckpointError, ValueError, OSError) as e:
            raise HTTPError(422, f"cannot load the model: {e}") from None

    def list_runs(self):
        found = sorted(self.runs().values(), key=lambda r: runs.updated(r) or 0, reverse=True)
        return {"paths": self.paths, "runs": [runs.summary(r) for r in found]}

    def detail(self, run):
        info = runs.summary(run)
        metrics = runs.read_metrics(run) or {}
        info["config"] = metrics.get("config")
        info["history"] = metrics.get("epochs") or []
        info["test"] = {k: v for k, v in metrics.items()
                        if k.startswith("test_") or k in ("per_class_accuracy",)}
        info["model_info"] = None
        if run.checkpoint is not None:
            try:
                loaded = inference.load(run.checkpoint)
            except (checkpoint.CheckpointError, ValueError, OSError) as e:
                info["model_error"] = str(e)
            else:
                info["model_info"] = loaded.describe()
                info["model"] = loaded.name
                info["config"] = info["config"] or loaded.config
        return info

    def events(self, run, query):
        since = _int_param(query, "since", 0)
        events, next_offset, more = runs.read_events(run, since)
        return {"events": events, "next": next_offset, "more": more}

    def test_digits(self, run):
        loaded = self.loaded(run)  # refuses runs without a loadable checkpoint
        try:
            return testdigits.evaluate(run.checkpoint)
        except (ValueError, OSError) as e:
            raise HTTPError(422, f"cannot evaluate {loaded.name} on its test set: {e}") from None

    def predict(self, run, body, content_type):
        loaded = self.loaded(run)
        try:
            if content_type == "application/json":
                try:
                    request = json.loads(body)
                except ValueError:
                    raise inference.InputError("the body is not valid JSON") from None
                if not isinstance(request, dict) or "pixels" not in request:
                    raise inference.InputError(
                        'expected a JSON object {"pixels": [[0..255, ...], ...]}')
                image = inference.image_from_pixels(request["pixels"], loaded.two_digit)
            else:
                if not body:
                    raise inference.InputError("the request has no image in its body")
                image = inference.image_from_bytes(body, loaded.two_digit)
        except inference.InputError as e:
            raise HTTPError(e.status, str(e)) from None
        return inference.predict(loaded, image)


def _int_param(query, name, default):
    values = query.get(name)
    if not values:
        return default
    try:
        value = int(values[0])
    except ValueError:
        value = -1
    if value < 0:
        raise HTTPError(400, f"{name}: expected a non-negative integer, got {values[0]!r}")
    return value


class Handler(http.server.BaseHTTPRequestHandler):
    """Routes requests to the Studio; every failure is answered in JSON and the server goes on."""

    server_version = "scratchnet-studio"
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a client may stall mid-request before its connection is dropped
    # a garbled request line still gets a status line in its answer (not HTTP/0.9's bare body)
    default_request_version = "HTTP/1.0"
    studio = None  # set on the subclass make_server creates

    def log_message(self, format, *args):
        pass  # a quiet terminal: failures reach the page as JSON errors

    def do_GET(self):
        self._handle(self._get)

    def do_HEAD(self):
        self._handle(self._get, head=True)

    def do_POST(self):
        self._handle(self._post)

    def do_PUT(self):
        self._handle(self._method_not_allowed)

    do_DELETE = do_PATCH = do_PUT

    def send_error(self, code, message=None, explain=None):
        """Errors found while parsing the request (bad syntax, unknown method), in JSON too."""
        self.close_connection = True
        text = message or self.responses.get(code, ("error",))[0]
        self._respond(code, _dumps({"error": text}), "application/json",
                      head=self.command == "HEAD")

    def _method_not_allowed(self):
        raise HTTPError(405, f"{self.command} is not supported")

    def _handle(self, route, head=False):
        try:
            self._check_host()
            status, body, content_type = route()
        except HTTPError as e:
            status, body, content_type = e.status, _dumps({"error": str(e)}), "application/json"
        except Exception as e:  # a bug must not take the server down: answer and go on
            status, content_type = 500, "application/json"
            body = _dumps({"error": f"internal error: {type(e).__name__}: {e}"})
        self._respond(status, body, content_type, head)

    def _respond(self, status, body, content_type, head=False):
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in SECURITY_HEADERS.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if not head:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _check_host(self):
        """Refuse Host names other than loopback ones when serving on loopback: a web page
        that points its own domain name at 127.0.0.1 (DNS rebinding) is refused."""
        if not self.studio.loopback_only:
            return
        host = (self.headers.get("Host") or "").strip()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if not host.startswith("[") and host.count(":") > 1:
            name = host  # a bare IPv6 address
        if not is_loopback(name):
            raise HTTPError(403, f"Host {host!r} is not this machine; open the URL the "
                                 f"server printed")

    def _get(self):
        url = urlsplit(self.path)
        path = url.path
        if path in PAGES:
            return self._static(PAGES[path])
        if path.startswith("/static/"):
            return self._static(path[len("/static/"):])
        if path == "/api/runs":
            return _ok(self.studio.list_runs())
        match = _RUN_PATH.match(path)
        if match:
            run = self.studio.run(match.group(1))
            action = match.group(2)
            if action is None:
                return _ok(self.studio.detail(run))
            if action == "/events":
                return _ok(self.studio.events(run, parse_qs(url.query)))
            if action == "/test-digits":
                return _ok(self.studio.test_digits(run))
            if action == "/predict":
                raise HTTPError(405, "predict takes a POST with the image in its body")
        raise HTTPError(404, f"nothing at {path}")

    def _static(self, name):
        found = self.studio.static.get(name)  # exact names only: no path ever reaches the disk
        if found is None:
            raise HTTPError(404, f"no file {name!r}")
        body, content_type = found
        return 200, body, content_type

    def _post(self):
        client_closes = self.close_connection
        self.close_connection = True  # until the body is read, the connection cannot be reused
        path = urlsplit(self.path).path
        match = _RUN_PATH.match(path)
        if not match or match.group(2) != "/predict":
            raise HTTPError(404 if not path.startswith("/api/") else 405,
                            f"nothing to POST to at {path}")
        run = self.studio.run(match.group(1))
        body = self._read_body()
        self.close_connection = client_closes
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        return _ok(self.studio.predict(run, body, content_type))

    def _read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raise HTTPError(411, "send the body with a Content-Length, not chunked")
        length = self.headers.get("Content-Length")
        try:
            length = int(length)
        except (TypeError, ValueError):
            raise HTTPError(411, "a Content-Length header is required") from None
        if length < 0:
            raise HTTPError(400, "Content-Length must not be negative")
        if length > MAX_UPLOAD:
            raise HTTPError(413, f"the upload has {length:,} bytes; at most {MAX_UPLOAD:,} "
                                 f"are accepted")
        body = self.rfile.read(length)
        if len(body) < length:
            raise HTTPError(400, f"the body ended after {len(body)} of {length} bytes")
        return body


def _dumps(value):
    return json.dumps(finite(value), allow_nan=False).encode()


def _ok(value):
    return 200, _dumps(value), "application/json"


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True  # Ctrl-C does not wait for open keep-alive connections


class _Server6(_Server):
    address_family = socket.AF_INET6


def make_server(paths, host="127.0.0.1", port=8000):
    """A server for the runs under ``paths``, listening (not yet serving) on host:port.

    Port 0 picks a free port: read it from ``server.server_address[1]``.
    """
    studio = Studio(paths, loopback_only=is_loopback(host))
    handler = type("StudioHandler", (Handler,), {"studio": studio})
    cls = _Server6 if ":" in host.strip("[]") else _Server
    try:
        server = cls((host.strip("[]"), port), handler)
    except OSError as e:
        raise OSError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    server.studio = studio
    return server


def url_of(server):
    host, port = server.server_address[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/"


def serve(paths=("./runs",), host="127.0.0.1", port=8000, out=sys.stdout):
    """Serve the studio for the runs under ``paths`` until Ctrl-C; prints the URL to ``out``."""
    server = make_server(paths, host, port)
    found = server.studio.runs()
    if not is_loopback(host):
        print(f"warning: serving on {host}, not loopback: anyone who can reach this machine "
              f"can see these runs and use the models", file=sys.stderr)
    print(f"scratchnet studio: {len(found)} run(s) under {', '.join(map(str, paths))}",
          file=out)
    if not found:
        print("no runs yet: train one (scratchnet train --model lenet); it shows up as it "
              "starts", file=out)
    print(f"open {url_of(server)} (draw) or {url_of(server)}train (training); Ctrl-C stops",
          file=out, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        print("scratchnet studio: stopped", file=out, flush=True)
    finally:
        server.server_close()
