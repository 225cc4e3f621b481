"""Run a per-thread worker on Numba's thread pool, calling it through its address.

Why not a ``parallel=True`` kernel with the work written inside its ``prange``? Numba links
every helper such a kernel calls (im2col, the GEMM binding, the pool, ...) into the kernel's
own LLVM module and optimises and compiles that module again, once for the outlined loop body
and once for the kernel. Measured here: the fused conv + ReLU + pool forward kernel took 7.8 s
of compile time beyond its helpers'. Written as a plain ``@njit`` worker ``worker(t, args)``
(one thread's share of the work), the same work compiles in 2.0 s: the worker is called
through its address, so no parallel kernel's module holds its code.

And only one parallel kernel is ever compiled: ``_launch(entry, T, env)``, whose three
arguments are integers whatever the worker. A parallel kernel costs 1.2-1.9 s to compile here
(Numba outlines the ``prange`` body into a gufunc and compiles both), so one per argument-tuple
type, as before, cost that for every kind of layer. Per argument type there is now only
``_launch_worker``, a plain function: it copies (worker address, args) into a stack slot
(``env``) and hands ``_launch`` the address of a small C function, defined in its own module
by ``_entry_and_env``, that unpacks env and calls the worker in Numba's calling convention.
Run time is unchanged: one indirect call per thread per launch.

``run(worker, T, args)``: ``worker(t, args)`` for ``t`` in ``range(T)``, one call per thread,
where ``args`` is a tuple (its types pick the compiled worker and ``_launch_worker``, both
cached on disk). One thread is launched the same way (4 µs here, against 1 µs for a call
from Python): a worker is never called from Python, so ``@by_address`` spares it the wrappers
that Python calls need.

Numba builds two wrappers around every compiled function, one that Python calls (it unboxes
each argument: for a worker's tuple of 30 arrays, a large function) and one with the C calling
convention; a function only ever called through its address needs neither. ``@by_address``
compiles without them: digitcnn's first step compiled ~2 s faster (one core).

The same reason as for the launcher, one level down: a worker that calls a large kernel
(conv.py's per-sample forward or backward) would hold that kernel's code, im2col and GEMM
calls included, and LLVM would optimise all of it again as part of the worker.
``call(at, t, n, args)`` calls instead ``function(t, n, args)`` compiled on its own, at the
address ``at = address(function, args)`` that the Python side passes in: digitcnn's first
training step compiled in 16.9 s here instead of 20.7 (one core, empty cache). The callee
takes the worker's own sub-tuple ``args``, so the types it was compiled for are those the
worker passes by construction. ``fixed_address`` and ``call_fixed`` do the same for kernels
whose argument types follow from a dtype (im2col, col2im, the direct convolution); their
callers check those types when they compile.
"""
import numba
import numpy as np
from llvmlite import ir
from numba import _dispatcher, njit, prange, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

from . import precompile

# Numba's own helper for a compiled function's address (the one its first-class function
# support uses); the address is that of the function in Numba's calling convention
from numba.experimental.function_type import _get_jit_address

__all__ = ["address", "by_address", "call", "call_fixed", "fixed_address", "run"]


def by_address(function):
    """``@njit(cache=True)`` for a kernel only ever called through its address (a worker of
    ``run``, a kernel of ``call`` or ``call_fixed``): compiled without the wrappers that calls
    from Python and from C need (module docstring). Under NUMBA_DISABLE_JIT it stays a plain
    Python function."""
    return njit(cache=True, no_cpython_wrapper=True, no_cfunc_wrapper=True)(function)


@intrinsic
def _call_entry(typingctx, entry, t, env):
    """Call the plain C function at address ``entry`` as ``entry(t, env)`` (both int64)."""
    def codegen(context, builder, signature, llargs):
        i64 = ir.IntType(64)
        fn = builder.inttoptr(llargs[0], ir.FunctionType(ir.VoidType(), [i64, i64]).as_pointer())
        builder.call(fn, [llargs[1], llargs[2]])
        return context.get_dummy_value()

    return types.void(types.int64, types.int64, types.int64), codegen


@njit(cache=True, parallel=True)
def _launch(entry, T, env):
    """The one parallel kernel: ``entry(t, env)`` for t in range(T), one call per thread."""
    for t in prange(T):
        _call_entry(entry, np.int64(t), env)


def compiled_address(function, argtypes):
    """Address of ``function`` (an ``@njit`` dispatcher, void result) compiled for ``argtypes``
    (or loaded from the on-disk cache), in Numba's calling convention: for ``call_at``."""
    function.compile(argtypes)
    return _get_jit_address(function, types.void(*argtypes))


def call_at(context, builder, address, argtypes, values):
    """Codegen: call the compiled function at ``address`` (an i64 value from
    ``compiled_address``) with ``values`` of ``argtypes``.

    The status is not looked at: the functions called this way (the workers, direct_conv's
    kernel) index within bounds by construction, and the only thing in them that could raise
    is a failed small allocation (the general pool scan's two np.empty).
    """
    function = builder.inttoptr(
        address, context.call_conv.get_function_type(types.void, argtypes).as_pointer())
    context.call_conv.call_function(builder, function, types.void, argtypes, values)


@intrinsic
def _entry_and_env(typingctx, address, args):
    """(entry, env) for ``_launch``: env points to a copy of (address, args) on the caller's
    stack; entry is a C function ``entry(t, env)``, defined here in the caller's module, that
    calls the compiled worker at ``address`` as ``worker(t, args)``."""
    def codegen(context, builder, signature, llargs):
        args_type = signature.args[1]
        i64 = ir.IntType(64)
        env_type = ir.LiteralStructType([i64, context.get_value_type(args_type)])
        env = cgutils.alloca_once(builder, env_type)
        builder.store(llargs[0], cgutils.gep_inbounds(builder, env, 0, 0))
        builder.store(llargs[1], cgutils.gep_inbounds(builder, env, 0, 1))
        # one entry per module: each signature of _launch_worker is a module of its own
        entry = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i64, i64]),
            "scratchnet_per_thread_entry")
        if entry.is_declaration:
            entry.linkage = "internal"
            body = ir.IRBuilder(entry.append_basic_block())
            t, env_address = entry.args
            env_in = body.inttoptr(env_address, env_type.as_pointer())
            worker_address = body.load(cgutils.gep_inbounds(body, env_in, 0, 0))
            args_value = body.load(cgutils.gep_inbounds(body, env_in, 0, 1))
            call_at(context, body, worker_address, [types.int64, args_type], [t, args_value])
            body.ret_void()
        return context.make_tuple(builder, signature.return_type,
                                  [builder.ptrtoint(entry, i64), builder.ptrtoint(env, i64)])

    return types.UniTuple(types.int64, 2)(types.int64, args), codegen


@njit(cache=True)
def _launch_worker(address, T, args):
    """worker(t, args) for t in range(T) in parallel, the worker's compiled code at ``address``.

    Compiled per argument-tuple type, but a plain function: the parallel kernel it calls,
    ``_launch``, has one signature for every worker (and is compiled once, then cached).
    """
    entry, env = _entry_and_env(address, args)
    _launch(entry, T, env)


# (function, number of leading int64 arguments, argument-type fingerprint) -> address of the
# function compiled for (int64, ..., typeof(args))
_ADDRESSES = {}


def _address(function, ints, args):
    # the fingerprint is Numba's own C-level type key for dispatch (~0.5 µs for a kernel's
    # 30 arguments; numba.typeof of the same tuple takes ~300 µs)
    key = (function, ints, _dispatcher.compute_fingerprint(args))
    address = _ADDRESSES.get(key)
    if address is None:
        # Numba starts its thread pool when Python calls a parallel kernel or asks for the
        # thread count; _launch runs from compiled code, which does neither, and a launch on a
        # pool never started crashes the process. A process's first run() or call() always
        # comes here (the table starts empty), so the pool is started before any launch.
        numba.get_num_threads()
        argtypes = (types.int64,) * ints + (numba.typeof(args),)
        address = _ADDRESSES[key] = _compiled(function, argtypes)
    return address


def _compiled(function, argtypes):
    """compiled_address, after asking precompile.py's helper process whether it has the code."""
    precompile.before_compile(function, argtypes)
    return compiled_address(function, argtypes)


def run(worker, T, args):
    """Call ``worker(t, args)`` for every ``t`` in ``range(T)``, in parallel when T > 1.
    worker: an ``@by_address`` (or ``@njit``) function returning nothing."""
    if precompile.walking:  # precompile.py's helper process: note the kernels, run nothing
        precompile.note_run(worker, T, args)
        return
    if numba.config.DISABLE_JIT:
        for t in range(T):
            worker(t, args)
        return
    _launch_worker(_address(worker, 1, args), T, args)


def address(function, args):
    """``at`` for ``call(at, t, n, args)``: ``function`` (an ``@njit`` function of (t, n, args)
    returning nothing) compiled for int64 t and n and the types of the tuple ``args`` (or loaded
    from the disk cache), once per process.

    With the JIT off, ``function`` itself; in precompile's helper process, which runs nothing,
    0 (the kernel is noted for compiling).
    """
    if numba.config.DISABLE_JIT:
        return function
    if precompile.walking:
        precompile.note_kernel(function, (types.int64, types.int64, numba.typeof(args)))
        return 0
    return _address(function, 2, args)


def call(at, t, n, args):
    """``function(t, n, args)`` for the function that ``address(function, args)`` returned as
    ``at``. In compiled code, an indirect call: the caller's module holds none of its code."""
    at(t, n, args)


@overload(call, jit_options={"cache": True})
def _call_nopython(at, t, n, args):
    for name, value in (("at", at), ("t", t), ("n", n)):
        if value != types.int64:  # the address was compiled for int64 t and n
            raise TypingError(f"per_thread.call: {name} must be int64, got {value}")

    def impl(at, t, n, args):
        call_fixed(at, (t, n, args))
    return impl


# (function, dtype) -> address, for fixed_address
_FIXED = {}


def fixed_address(function, dtype, argtypes_of):
    """Address of ``function`` compiled for the Numba types ``argtypes_of(dtype)`` (or loaded
    from the disk cache), for ``call_fixed``: a kernel whose argument types follow from a dtype
    (direct_conv's, conv.py's im2col and col2im loops). Kept per (function, dtype): a layer
    asks on every call, and building the types costs ~20 µs where the lookup costs ~1.

    With the JIT off, ``function`` itself; in precompile's helper process 0 (noted).
    """
    if numba.config.DISABLE_JIT:
        return function
    if precompile.walking:
        precompile.note_kernel(function, tuple(argtypes_of(dtype)))
        return 0
    key = (function, np.dtype(dtype))
    address = _FIXED.get(key)
    if address is None:
        address = _FIXED[key] = _compiled(function, tuple(argtypes_of(dtype)))
    return address


@intrinsic
def call_fixed(typingctx, at, args):
    """Codegen only: ``function(*args)`` for the function compiled at address ``at``. Nothing
    is checked here: each caller checks that ``args`` has exactly the types the address was
    compiled for (``call``, direct_conv.call, conv.run_loop)."""
    def codegen(context, builder, signature, llargs):
        values = [builder.extract_value(llargs[1], i) for i in range(len(args.types))]
        call_at(context, builder, llargs[0], list(args.types), values)
        return context.get_dummy_value()

    return types.void(types.int64, args), codegen
