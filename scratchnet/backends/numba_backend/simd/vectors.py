"""LLVM IR building blocks shared by the hand-written vector kernels.

Each kernel's inner block is a Numba ``@intrinsic`` whose code generator uses these helpers:
vectors of ``lanes(dtype)`` values, typed pointers made from an array's address and an element
index, broadcasts and ``llvm.fmuladd``, and the one intrinsic they all start from: a zeroed
block of accumulators (:func:`new_block_intrinsic`). Everything here is public API of llvmlite
and Numba.
"""
import functools

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["VECTOR_BYTES", "WIDE_VECTOR_BYTES", "has_wide_vectors", "has_vector_fma", "lanes",
           "vector_of", "element_and_vector", "pointer", "vector_pointer", "fmuladd", "splat",
           "new_block_intrinsic", "block_vectors", "slot"]

VECTOR_BYTES = 32  # AVX2's 256-bit registers (16 of them)
WIDE_VECTOR_BYTES = 64  # AVX-512's 512-bit registers (32 of them)


@functools.cache
def _host_features():
    """The CPU features LLVM compiles for here, as "+name" strings."""
    return frozenset(llvm.get_host_cpu_features().flatten().split(","))


def has_wide_vectors():
    """True when the CPU Numba compiles for has AVX-512F. Elsewhere LLVM splits each 512-bit
    operation in two and a block of 24 accumulators spills: right, but slow."""
    return "+avx512f" in _host_features()


def has_vector_fma():
    """True on a CPU with AVX2 and FMA (16 registers of 256 bits, fused multiply-add)."""
    return {"+avx2", "+fma"} <= _host_features()


def lanes(dtype, vector_bytes):
    """Values per vector: 8 float32 or 4 float64 in 32 bytes, 16 or 8 in 64."""
    return vector_bytes // np.dtype(dtype).itemsize


def vector_of(element, vector_bytes):
    """The LLVM vector of ``element`` (ir.FloatType or ir.DoubleType) filling vector_bytes."""
    width = 4 if isinstance(element, ir.FloatType) else 8
    return ir.VectorType(element, vector_bytes // width)


def element_and_vector(context, like, vector_bytes):
    """The LLVM element type of the Numba array type ``like`` and its vector of vector_bytes
    (an intrinsic's arrays are typed by a ``like`` argument)."""
    element = context.get_value_type(like.dtype)
    return element, vector_of(element, vector_bytes)


def pointer(builder, address, element, index=None):
    """The element pointer for an integer ``address`` (an array's ``ctypes.data``), moved by
    ``index`` elements when given."""
    p = builder.inttoptr(address, element.as_pointer())
    return p if index is None else builder.gep(p, [index])


def vector_pointer(builder, address, element, index, vector):
    """A pointer to ``vector`` at element ``index`` of the array at ``address`` (load and
    store through it with ``align=`` one element's size: it need not be aligned)."""
    return builder.bitcast(pointer(builder, address, element, index), vector.as_pointer())


def fmuladd(builder, vector):
    """LLVM's ``llvm.fmuladd`` for ``vector``: a·b + c, one fused instruction where the CPU has
    FMA."""
    bits = 32 if isinstance(vector.element, ir.FloatType) else 64
    name = f"llvm.fmuladd.v{vector.count}f{bits}"
    module = builder.module
    if name in module.globals:
        return module.globals[name]
    return ir.Function(module, ir.FunctionType(vector, [vector] * 3), name)


def splat(builder, vector, scalar):
    """``scalar`` in every lane of a ``vector``."""
    i32 = ir.IntType(32)
    one = builder.insert_element(ir.Constant(vector, ir.Undefined), scalar, ir.Constant(i32, 0))
    return builder.shuffle_vector(one, ir.Constant(vector, ir.Undefined),
                                  ir.Constant(ir.VectorType(i32, vector.count),
                                              [0] * vector.count))


def new_block_intrinsic(vector_bytes, count):
    """An ``@intrinsic`` ``new_block(like)``: ``count`` zeroed vectors of ``vector_bytes`` for
    arrays of like's dtype, on the stack of the kernel that calls it, as an opaque pointer.

    The array is allocated in the kernel's entry block and every access to it is at a constant
    index, so LLVM keeps it in registers; the intrinsics that use it bitcast it back with
    :func:`block_vectors`.
    """
    @intrinsic
    def new_block(typingctx, like):
        def codegen(context, builder, signature, args):
            _, vector = element_and_vector(context, like, vector_bytes)
            block_type = ir.ArrayType(vector, count)
            with builder.goto_entry_block():
                block = builder.alloca(block_type)
            builder.store(ir.Constant(block_type, None), block)
            return builder.bitcast(block, ir.IntType(8).as_pointer())

        return types.voidptr(like), codegen

    return new_block


def block_vectors(builder, block, vector, count):
    """A block's i8 pointer (from :func:`new_block_intrinsic`) as a pointer to its
    ``[count x vector]``."""
    return builder.bitcast(block, ir.ArrayType(vector, count).as_pointer())


def slot(builder, block, k):
    """A pointer to vector k of a block from :func:`block_vectors` (a constant index, so the
    block stays in registers)."""
    i32 = ir.IntType(32)
    return builder.gep(block, [ir.Constant(i32, 0), ir.Constant(i32, k)], inbounds=True)
