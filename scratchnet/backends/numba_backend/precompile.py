"""Compile a training step's kernels in two processes at once, ahead of use.

Why: with an empty Numba cache the first training step compiles every kernel it meets, one
after another, on one core (17-20 s of compile time for the conv models on the 2-core target,
DESIGN.md, "Compile time"), while the other core idles.

How (``compile_ahead(model, x, optimizer)``, called before the first step):

1. The process forks. The child walks ``model(x)``, ``backward_to_params(model, ·)`` and
   ``optimizer.step()`` with every scratchnet kernel call intercepted: nothing compiles and
   nothing runs, each call only notes (kernel, argument types). The Python code between kernels
   still runs, so the types are exactly those the real step will use. It sends this list, in
   call order, through a pipe.
2. The two processes then share the list from its two ends. The parent goes on with its step
   and compiles kernels as it meets them, from the front (the forward pass first); the child
   compiles from the back (the optimizer, then the backward pass, last layer first, then as
   much of the forward pass as the parent has not reached) and sends each compiled result,
   serialised the way Numba's own disk cache serialises it. Whoever first creates a kernel's
   claim file (``O_EXCL``, atomic) compiles that kernel; the other never does.
3. When the parent meets argument types it has no code for (Numba then calls the dispatcher's
   ``_compile_for_args``; per_thread.py asks before compiling a worker or a kernel it calls by
   address), a hook takes the disk cache's copy if there is one; else it claims the kernel and
   lets Numba compile it, or, when the child holds the claim, waits for the child's result,
   installs it (Numba's cache-load path) and writes it to the disk cache.

Only the parent writes the disk cache: Numba's index files are not safe against two processes
adding different signatures of one function at once (both can pick the same data file name).

Anything unexpected (no ``fork``, JIT disabled, the child failing or hanging, a Numba whose
internals differ) ends the session and the parent compiles the rest itself, as it would have
without it: this changes when kernels compile, never what they compute.
"""
import atexit
import hashlib
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

# True in the child while it walks the step (per_thread.run and per_thread.address then only
# note their kernels)
walking = False
_note = None  # the child's note(dispatcher, argtypes) while walking
_session = None  # the parent's _Session while the child is working
_started = set()  # (model id, input shape, dtype) already handed to a child in this process


def enabled():
    """Whether a helper process can be used here (fork, the JIT on, not switched off)."""
    return (hasattr(os, "fork") and sys.platform.startswith("linux")
            and not numba.config.DISABLE_JIT
            and os.environ.get("SCRATCHNET_COMPILE_AHEAD", "1") != "0")


def compile_ahead(model, x, optimizer=None, loss=None):
    """Start a helper process that compiles a training step's kernels with this one.

    Call it before the first training step on batch ``x`` (the real batch: its size picks
    serial or parallel kernels). ``loss``: the step's loss as a function of the model's output
    that returns the gradient backward starts from (so the loss kernels are shared out too);
    without it the walk starts backward from zeros. Returns at once; does nothing when the same
    model already had a helper for this input shape in this process, or when ``enabled()`` is
    False.
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
        _child(model, x, optimizer, loss, dispatchers, write_fd, folder)
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

def _child(model, x, optimizer, loss, dispatchers, fd, folder):
    """Walk the step, send the list, compile from its back what the parent has not claimed,
    send the results; exit without cleanup (``os._exit``: the parent's atexit handlers and
    buffered output are the parent's)."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        kernels = _walk(model, x, optimizer, loss, dispatchers)
        _send(fd, {"kernels": list(kernels)})
        for i, (key, (dispatcher, argtypes)) in reversed(list(enumerate(kernels.items()))):
            if not _claim(folder, key):
                continue  # the parent compiles this one
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
    finally:
        os._exit(code)


def _claim(folder, key):
    """True for the first of the two processes to ask for ``key``: that one compiles it."""
    name = hashlib.sha1(key.encode()).hexdigest() + ".claim"
    try:
        os.close(os.open(os.path.join(folder, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _walk(model, x, optimizer, loss, dispatchers):
    """{key: (dispatcher, argtypes)} of the kernels the step calls, in call order. Nothing is
    compiled or run: compiled code is dropped first, and a call without code goes to
    ``_compile_for_args``, replaced here."""
    global walking, _note
    from ...nn.module import backward_to_params

    kernels = {}
    in_loss = [False]
    in_body = [0]  # > 0 while a kernel's Python body runs: its calls are not the step's

    def note(dispatcher, argtypes):
        kernels.setdefault(_key(dispatcher, argtypes), (dispatcher, argtypes))

    def body(dispatcher):
        def run(*args, **kwargs):
            in_body[0] += 1
            try:
                return dispatcher.py_func(*args, **kwargs)
            finally:
                in_body[0] -= 1
        return run

    def intercept(dispatcher):
        def compile_for_args(*args, **kwargs):
            if not any(_holds_array(a) for a in args):
                # a scalar helper whose value the Python side uses (an output size): run its
                # Python body
                return dispatcher.py_func
            if in_body[0] == 0:  # (compiled code types a kernel's own calls differently)
                note(dispatcher, _argtypes(dispatcher, args))
            # the loss's kernels return values the code after them unpacks: run their Python
            # bodies (a batch of class scores: milliseconds). The layers' write in place.
            return body(dispatcher) if in_loss[0] else _skip
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
            dout = _zeros_like(out)
            if loss is not None:
                in_loss[0] = True
                try:  # on scores of zeros: the model's own output was never computed
                    dout = loss(_zeros_like(out))
                except Exception:  # the parent compiles the loss's kernels then
                    _debug(traceback.format_exc())
                finally:
                    in_loss[0] = False
            backward_to_params(model, dout)
            if optimizer is not None:
                optimizer.step()
    finally:
        walking, _note = False, None
        for d in dispatchers:
            del d._compile_for_args
    return kernels


def _zeros_like(out):
    """Zeros shaped like a model's output: an array, or a tuple of them (a two-head model)."""
    if isinstance(out, tuple):
        return tuple(_zeros_like(o) for o in out)
    return np.zeros_like(out)


def note_kernel(function, argtypes):
    """per_thread.address's and fixed_address's stand-in while the child walks: note
    ``function`` for ``argtypes``."""
    _note(function, argtypes)


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
    """The parent's side: hooks on every dispatcher until every kernel of the child's list is
    compiled here or installed."""

    def __init__(self, fd, pid, dispatchers, folder):
        self.fd, self.pid, self.folder, self.buffer = fd, pid, folder, b""
        self.kernels = None  # the child's list of keys, once received
        self.results = {}  # key -> serialised CompileResult (None: failed), not yet installed
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
        """Before (dispatcher, argtypes) compiles here: install its code from the disk cache,
        or claim it (Numba then compiles it as usual), or, when the child holds its claim,
        install the child's result (waiting for it)."""
        key = _key(dispatcher, argtypes)
        # compiled by an earlier run: no need to claim it or to wait for the child
        cres = dispatcher._cache.load_overload(argtypes, dispatcher.targetctx)
        if cres is None and not _claim(self.folder, key):
            t0 = time.perf_counter()
            payload = self._wait_for(key)
            _debug(f"parent waited {time.perf_counter() - t0:.2f} s for {key}")
            if payload is not None:
                cres = compiler.CompileResult._rebuild(dispatcher.targetctx,
                                                       *pickle.loads(payload))
                dispatcher._cache.save_overload(argtypes, _Serialised(cres, payload))
        if cres is not None:
            _install(dispatcher, argtypes, cres)
        self._read_ready()
        if self.kernels is not None and self.kernels <= self._compiled() | {key}:
            self.close()  # nothing left that the child could hand over

    def _compiled(self):
        """Keys of every signature compiled (or installed) here so far."""
        return {_key(d, sig) for d in self.dispatchers for sig in list(d.overloads)}

    def _wait_for(self, key):
        """The child's serialised result for ``key``; None when it failed or is gone."""
        while key not in self.results:
            if not self._take(self._read_message(WAIT_LIMIT_S)):
                self.close()
                return None
        return self.results.pop(key)

    def _read_ready(self):
        """Take the messages the child has sent already, without waiting. A child gone before
        it sent its list (its walk failed) ends the session."""
        while self.fd is not None and self._take(self._read_message(0)):
            pass
        if self.kernels is None and self.fd is not None and self._gone():
            self.close()

    def _gone(self):
        """True when the child has exited (then reaped here: its pid is no longer ours)."""
        if os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            return False
        self.pid = None
        return True

    def _take(self, message):
        """Record one message (the list or a result); False when there was none."""
        if message is None:
            return False
        if "kernels" in message:
            self.kernels = set(message["kernels"])
        elif "file" in message:
            with open(message["file"], "rb") as f:
                self.results[message["key"]] = f.read()
            os.remove(message["file"])
        else:  # cached, or the child failed: the parent loads or compiles it itself
            self.results[message["key"]] = None
        return True

    def _read_message(self, timeout):
        """The next message, waiting at most ``timeout`` seconds; None if there is none."""
        while b"\n" not in self.buffer:
            chunk = self._read_chunk(timeout)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def _read_chunk(self, timeout):
        if self.fd is None:
            return b""
        deadline = time.monotonic() + timeout
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
            if self.pid is not None:  # (None: reaped by _gone)
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
