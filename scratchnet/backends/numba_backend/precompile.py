"""Compile a training step's backward and optimizer kernels in a helper process, ahead of use.

Why: with an empty Numba cache the first training step compiles every kernel it meets, one
after another, on one core: 21–30 s for the conv models on the 2-core target (DESIGN.md,
"Compile time"), while the other core idles. The backward pass's kernels are about 40 % of
that work and none of them is needed before the forward pass and the loss are done.

How (``compile_ahead(model, x, optimizer)``, called before the first step):

1. The process forks. The child walks ``model(x)``, ``backward_to_params(model, ·)`` and
   ``optimizer.step()`` with every scratchnet kernel call intercepted: nothing compiles and
   nothing runs, each call only notes (kernel, argument types). The Python code between kernels
   still runs, so the types are exactly those the real step will use. The kernels the backward
   pass and the optimizer call, and the forward pass does not, are the child's *claims*.
2. The child sends its claims through a pipe, then compiles them in call order and sends each
   compiled result, serialised the way Numba's own disk cache serialises it.
3. The parent goes on with its step, compiling the forward kernels itself. When a kernel meets
   argument types it has no code for (Numba then calls the dispatcher's ``_compile_for_args``;
   per_thread.py asks before compiling a worker), a hook checks the claims: for a claimed
   kernel it takes the disk cache's copy if there is one, else waits for the child's result,
   installs it (Numba's cache-load path) and writes it to the disk cache.

Only the parent writes the disk cache: Numba's index files are not safe against two processes
adding different signatures of one function at once (both can pick the same data file name).

Anything unexpected (no ``fork``, JIT disabled, the child failing or hanging, a Numba whose
internals differ) ends the session and the parent compiles the rest itself, as it would have
without it: this changes when kernels compile, never what they compute.
"""
import atexit
import json
import os
import pickle
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings

import numba
import numpy as np
from numba.core import compiler
from numba.core.dispatcher import Dispatcher

__all__ = ["compile_ahead"]

# longest wait for one claimed kernel before the parent gives up on the child and compiles it
# itself (the slowest single kernel here compiles in ~10 s on a busy machine)
WAIT_LIMIT_S = 120

# True in the child while it walks the step (per_thread.run then only notes its worker)
walking = False
_note = None  # the child's note(dispatcher, argtypes) while walking
_session = None  # the parent's _Session while the child is working
_started = set()  # (model id, input shape, dtype) already handed to a child in this process


def enabled():
    """Whether a helper process can be used here (fork, the JIT on, not switched off)."""
    return (hasattr(os, "fork") and sys.platform.startswith("linux")
            and not numba.config.DISABLE_JIT
            and os.environ.get("SCRATCHNET_COMPILE_AHEAD", "1") != "0")


def compile_ahead(model, x, optimizer=None):
    """Start compiling ``model``'s backward kernels (and ``optimizer``'s) in a helper process.

    Call it before the first training step on batch ``x`` (the real batch: its size picks
    serial or parallel kernels). Returns at once; does nothing when the same model already had
    a helper for this input shape in this process, or when ``enabled()`` is False.
    """
    global _session
    key = (id(model), tuple(np.shape(x)), str(np.asarray(x).dtype))
    if not enabled() or key in _started:
        return
    if _session is not None:  # an earlier model's helper: its kernels are no longer awaited
        _session.close()
    _started.add(key)
    dispatchers = _our_dispatchers()
    try:
        # results travel as files, the pipe carries only short messages: a result can exceed
        # the pipe's 64 KiB buffer, and the child must never wait for the busy parent to read
        folder = tempfile.mkdtemp(prefix="scratchnet-precompile-")
        read_fd, write_fd = os.pipe()
        with warnings.catch_warnings():
            # Python 3.12+ warns about fork in a threaded process: the child only compiles
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError as error:  # no temporary folder, no pipe or no fork: compile here
        _debug(f"no helper process: {error!r}")
        return
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        _child(model, x, optimizer, dispatchers, write_fd, folder)
    os.close(write_fd)
    _session = _Session(read_fd, pid, dispatchers, folder)


def before_compile(dispatcher, argtypes):
    """The parent's hook: called before ``dispatcher`` compiles for ``argtypes`` (a tuple of
    Numba types). Installs the child's result when the child claimed this kernel."""
    if _session is not None:
        _session.deliver_safely(dispatcher, tuple(argtypes))


def _our_dispatchers():
    """Every Numba dispatcher defined in a loaded scratchnet module."""
    found = {}
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("scratchnet"):
            continue
        for obj in list(vars(module).values()):
            if (isinstance(obj, Dispatcher)
                    and getattr(obj.py_func, "__module__", "").startswith("scratchnet")):
                found[id(obj)] = obj
    return list(found.values())


def _name(dispatcher):
    return f"{dispatcher.py_func.__module__}.{dispatcher.py_func.__qualname__}"


def _key(dispatcher, argtypes):
    return f"{_name(dispatcher)}{tuple(argtypes)}"


def _argtypes(dispatcher, args):
    return tuple(dispatcher.typeof_pyval(a) for a in args)


def _holds_array(value):
    if isinstance(value, np.ndarray):
        return True
    return isinstance(value, tuple) and any(_holds_array(v) for v in value)


def _debug(message):
    if os.environ.get("SCRATCHNET_PRECOMPILE_DEBUG"):
        print(f"[precompile {time.monotonic():.2f}] {message}", file=sys.stderr)


def _skip(*args, **kwargs):
    return None


# ---- the child -----------------------------------------------------------------------------

def _child(model, x, optimizer, dispatchers, fd, folder):
    """Walk the step, send the claims, compile them, send the results; exit without cleanup
    (``os._exit``: the parent's atexit handlers and buffered output are the parent's)."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        claims = _walk(model, x, optimizer, dispatchers)
        _send(fd, {"claims": list(claims)})
        for i, (key, (dispatcher, argtypes)) in enumerate(claims.items()):
            try:
                if dispatcher._cache.load_overload(argtypes, dispatcher.targetctx) is not None:
                    _send(fd, {"key": key, "cached": True})  # the parent loads it itself
                    continue
                dispatcher.compile(argtypes)
                reduced = dispatcher.overloads[argtypes]._reduce()
                path = os.path.join(folder, f"{i}.pickle")
                with open(path, "wb") as f:
                    pickle.dump(reduced, f, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as error:  # the parent compiles this one itself
                _send(fd, {"key": key, "error": repr(error)})
                continue
            _send(fd, {"key": key, "file": path})
            _debug(f"child compiled {key}")
        code = 0
    except BaseException:  # the parent compiles what it did not get
        _debug(traceback.format_exc())
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        os._exit(code)


def _walk(model, x, optimizer, dispatchers):
    """{key: (dispatcher, argtypes)} of the kernels the backward pass and the optimizer call
    that the forward pass does not, in call order. Nothing is compiled or run: compiled code
    is dropped first, and a call without code goes to ``_compile_for_args``, replaced here."""
    global walking, _note
    from ...nn.module import backward_to_params

    forward, claims, phase = set(), {}, ["forward"]

    def note(dispatcher, argtypes):
        key = _key(dispatcher, argtypes)
        if phase[0] == "forward":
            forward.add(key)
        elif key not in forward:
            claims.setdefault(key, (dispatcher, argtypes))

    def intercept(dispatcher):
        def compile_for_args(*args, **kwargs):
            if not any(_holds_array(a) for a in args):
                # a scalar helper whose value the Python side uses (an output size): run its
                # Python body
                return dispatcher.py_func
            note(dispatcher, _argtypes(dispatcher, args))
            return _skip
        return compile_for_args

    for d in dispatchers:
        d._reset_overloads()
        d._compile_for_args = intercept(d)
        # read the disk cache, never write it (see the module docstring)
        d._cache.save_overload = _skip
    walking, _note = True, note
    try:
        with np.errstate(all="ignore"):
            out = model(x)
            phase[0] = "backward"
            backward_to_params(model, np.zeros_like(out))
            if optimizer is not None:
                optimizer.step()
    finally:
        walking, _note = False, None
        for d in dispatchers:
            del d._compile_for_args
    return claims


def note_run(worker, T, args):
    """per_thread.run's stand-in while the child walks: note the worker and its launcher."""
    from numba import types

    from . import per_thread

    argtypes = numba.typeof(args)
    _note(worker, (types.int64, argtypes))
    if T > 1:  # (never walking with the JIT off: see enabled())
        _note(per_thread._launch_worker, (types.int64, types.int64, argtypes))


def _send(fd, message):
    data = json.dumps(message).encode() + b"\n"
    while data:
        data = data[os.write(fd, data):]


# ---- the parent ----------------------------------------------------------------------------

class _Session:
    """The parent's side: hooks on every dispatcher until all claims are settled."""

    def __init__(self, fd, pid, dispatchers, folder):
        self.fd, self.pid, self.folder, self.buffer = fd, pid, folder, b""
        self.claims = None  # key -> None (pending) or "settled"
        self.results = {}  # key -> serialised CompileResult, received, not yet installed
        self.dispatchers = dispatchers
        for d in dispatchers:
            d._compile_for_args = self._hook(d)
        atexit.register(self.close)

    def _hook(self, dispatcher):
        original = type(dispatcher)._compile_for_args.__get__(dispatcher)

        def compile_for_args(*args, **kwargs):
            self.deliver_safely(dispatcher, _argtypes(dispatcher, args))
            return original(*args, **kwargs)
        return compile_for_args

    def deliver_safely(self, dispatcher, argtypes):
        """``deliver``; on any failure end the session (Numba then compiles as usual)."""
        try:
            self.deliver(dispatcher, argtypes)
        except Exception:
            _debug(traceback.format_exc())
            self.close()

    def deliver(self, dispatcher, argtypes):
        """Install code for (dispatcher, argtypes) from the disk cache or, when the child
        claimed that kernel, from the child (waiting for it). Otherwise leave it to Numba."""
        key = _key(dispatcher, argtypes)
        if self.claims is not None and self.claims.get(key, "settled") == "settled":
            return
        # compiled by an earlier run: no need to wait for the claims or the child
        cres = dispatcher._cache.load_overload(argtypes, dispatcher.targetctx)
        if cres is None:
            if self.claims is None and not self._read_claims():
                return
            if self.claims.get(key, "settled") == "settled":
                return
            t0 = time.perf_counter()
            payload = self._wait_for(key)
            _debug(f"parent waited {time.perf_counter() - t0:.2f} s for {key}")
            if payload is not None:
                cres = compiler.CompileResult._rebuild(dispatcher.targetctx,
                                                       *pickle.loads(payload))
                dispatcher._cache.save_overload(argtypes, _Serialised(cres, payload))
        if cres is not None:
            _install(dispatcher, argtypes, cres)
        if self.claims is not None and key in self.claims:
            self.claims[key] = "settled"
            if all(v == "settled" for v in self.claims.values()):
                self.close()

    def _read_claims(self):
        message = self._read_message()
        if message is None or "claims" not in message:
            self.close()
            return False
        self.claims = dict.fromkeys(message["claims"])
        return True

    def _wait_for(self, key):
        """The child's serialised result for ``key``; None when it failed or is gone."""
        while key not in self.results:
            message = self._read_message()
            if message is None:
                self.close()
                return None
            path = message.get("file")
            if path is None:
                self.results[message["key"]] = None
                continue
            with open(path, "rb") as f:
                self.results[message["key"]] = f.read()
            os.remove(path)
        return self.results.pop(key)

    def _read_message(self):
        while b"\n" not in self.buffer:
            chunk = self._read_chunk()
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def _read_chunk(self):
        if self.fd is None:
            return b""
        deadline = time.monotonic() + WAIT_LIMIT_S
        while True:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            if ready:
                return os.read(self.fd, 1 << 20)
            if time.monotonic() >= deadline:
                return b""

    def close(self):
        """End the session: unhook, stop the child if it still runs, reap it."""
        global _session
        if _session is self:
            _session = None
        for d in self.dispatchers:
            d.__dict__.pop("_compile_for_args", None)
        self.dispatchers = []
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.pid, 0)
            shutil.rmtree(self.folder, ignore_errors=True)
        atexit.unregister(self.close)


def _install(dispatcher, argtypes, cres):
    """Give ``dispatcher`` the compiled result ``cres`` for ``argtypes``, through Numba's own
    path for a result loaded from its disk cache."""
    cache = dispatcher._cache
    dispatcher._cache = _Handover(cres)
    try:
        dispatcher.compile(argtypes)
    finally:
        dispatcher._cache = cache


class _Serialised:
    """A result rebuilt from the child's bytes, for the disk cache: it serialises to those bytes.
    (Numba cannot serialise again a library it loaded from object code.)"""

    def __init__(self, cres, payload):
        self.cres, self.payload = cres, payload

    def __getattr__(self, name):
        return getattr(self.cres, name)

    def _reduce(self):
        return pickle.loads(self.payload)


class _Handover:
    """Stands in for a dispatcher's disk cache during one ``compile``: hands over a result."""

    def __init__(self, cres):
        self.cres = cres

    def load_overload(self, sig, target_context):
        return self.cres

    def save_overload(self, sig, data):
        pass
