"""Run a per-thread worker on Numba's thread pool, calling it through its address.

Why not a ``parallel=True`` kernel with the work written inside its ``prange``? Numba links
every helper such a kernel calls (im2col, the GEMM binding, the pool, ...) into the kernel's
own LLVM module and optimises and compiles that module again, once for the outlined loop body
and once for the kernel. Measured here: the fused conv + ReLU + pool forward kernel took 7.8 s
of compile time beyond its helpers'. Written as a plain ``@njit`` worker ``worker(t, args)``
(one thread's share of the work) and launched by the tiny ``prange`` loop below, which calls
the worker through a function pointer, the same work compiles in 2.0 s (worker) + 1.1 s
(launcher): the launcher's module holds no helper code. Run time is unchanged (the call
through a pointer happens once per thread per launch).

``run(worker, T, args)``: ``worker(t, args)`` for ``t`` in ``range(T)``, one call per thread,
where ``args`` is a tuple (its types pick the compiled worker and launcher, both cached on
disk). With one thread the worker is called directly, with no launch at all.
"""
import numba
import numpy as np
from numba import _dispatcher, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import precompile

# Numba's own helper for a compiled function's address (the one its first-class function
# support uses); the address is that of the function in Numba's calling convention
from numba.experimental.function_type import _get_jit_address

__all__ = ["run"]


@intrinsic
def _function_at(typingctx, address, args):
    """A callable ``fn(t, args)`` for the compiled worker at ``address`` (int64)."""
    fn_type = types.FunctionType(types.void(types.int64, args))

    def codegen(context, builder, signature, llargs):
        fn = cgutils.create_struct_proxy(fn_type)(context, builder)
        voidptr = context.get_value_type(types.voidptr)
        # only jit_addr is needed: Numba calls through it when it is not null
        fn.jit_addr = builder.inttoptr(llargs[0], voidptr)
        fn.c_addr = cgutils.get_null_value(voidptr)
        fn.py_addr = cgutils.get_null_value(voidptr)
        return fn._getvalue()

    return fn_type(types.int64, args), codegen


@njit(cache=True, parallel=True)
def _launch(address, T, args):
    fn = _function_at(address, args)
    for t in prange(T):
        fn(np.int64(t), args)


# (worker, argument-type fingerprint) -> address of the worker compiled for those types
_ADDRESSES = {}


def _address(worker, args):
    # the fingerprint is Numba's own C-level type key for dispatch (~0.5 µs for a kernel's
    # 30 arguments; numba.typeof of the same tuple takes ~300 µs)
    key = (worker, _dispatcher.compute_fingerprint(args))
    address = _ADDRESSES.get(key)
    if address is None:
        signature = types.void(types.int64, numba.typeof(args))
        precompile.before_compile(worker, signature.args)  # the helper process may have it
        worker.compile(signature.args)  # or load it from the on-disk cache
        address = _ADDRESSES[key] = _get_jit_address(worker, signature)
    return address


def run(worker, T, args):
    """Call ``worker(t, args)`` for every ``t`` in ``range(T)``, in parallel when T > 1."""
    if precompile.walking:  # precompile.py's helper process: note the kernels, run nothing
        precompile.note_run(worker, T, args)
        return
    if T <= 1 or numba.config.DISABLE_JIT:
        for t in range(T):
            worker(t, args)
        return
    _launch(_address(worker, args), T, args)
