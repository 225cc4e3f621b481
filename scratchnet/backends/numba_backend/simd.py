"""LLVM IR building blocks for the kernels that write their vector code by hand.

Numba's loop vectoriser leaves some hot loops scalar (short trip counts, possible aliasing, a
loop-carried block of accumulators), so direct_conv.py and sparse_linear.py emit the vector
operations themselves from small ``@intrinsic`` functions. These helpers are the parts those
intrinsics share: vectors of ``lanes(dtype)`` values in a 256-bit register (AVX2, which every
x86-64 machine this project runs on has) or, for filter_vector_conv.py, in a 512-bit one
(``WIDE_VECTOR_BYTES``: AVX-512, where ``has_wide_vectors``), element addresses in a flat
array, broadcasts and ``llvm.fmuladd``.
"""
import functools

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba.core import cgutils

__all__ = ["VECTOR_BYTES", "WIDE_VECTOR_BYTES", "has_wide_vectors", "lanes", "vector_type",
           "fmuladd", "splat", "element_pointer", "vector_pointer", "zeroed_block"]

VECTOR_BYTES = 32  # AVX2's 256-bit registers
WIDE_VECTOR_BYTES = 64  # AVX-512's: 32 of them, twice the registers and twice the width


@functools.cache
def has_wide_vectors():
    """True when the CPU Numba compiles for has AVX-512F (32 registers of 512 bits). Elsewhere
    LLVM would split each 512-bit operation in two and a block of 28 accumulators would spill:
    the kernels that use them are still right there, only slow, so callers take another path."""
    return "+avx512f" in llvm.get_host_cpu_features().flatten().split(",")


def lanes(dtype, vector_bytes=VECTOR_BYTES):
    """Values per vector register: 8 float32, 4 float64 (16 and 8 in a wide register)."""
    return vector_bytes // np.dtype(dtype).itemsize


def vector_type(context, array_type, vector_bytes=VECTOR_BYTES):
    """The LLVM vector of ``lanes`` elements of a Numba array type's dtype."""
    element = context.get_value_type(array_type.dtype)
    return ir.VectorType(element, lanes(str(array_type.dtype), vector_bytes))


def fmuladd(builder, vector):
    """LLVM's llvm.fmuladd on ``vector``: a·b + c, fused where the CPU has FMA."""
    suffix = f"v{vector.count}f{64 if isinstance(vector.element, ir.DoubleType) else 32}"
    return cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vector, [vector] * 3), "llvm.fmuladd." + suffix)


def splat(builder, vector, scalar):
    """``scalar`` in every lane of a ``vector``."""
    i32 = ir.IntType(32)
    one = builder.insert_element(ir.Constant(vector, ir.Undefined), scalar, ir.Constant(i32, 0))
    return builder.shuffle_vector(one, ir.Constant(vector, ir.Undefined),
                                  ir.Constant(ir.VectorType(i32, vector.count), [0] * vector.count))


def element_pointer(context, builder, array_type, array, index):
    """Address of array.flat[index] (C-contiguous 1-D array)."""
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [index])


def vector_pointer(context, builder, array_type, array, index, vector):
    """array.flat[index : index + vector.count] as a pointer to ``vector`` (for unaligned
    loads and stores: pass ``align`` = one element's size)."""
    return builder.bitcast(element_pointer(context, builder, array_type, array, index),
                           vector.as_pointer())


def zeroed_block(context, builder, array_type, count, vector_bytes=VECTOR_BYTES):
    """``count`` zeroed vectors of ``array_type``'s dtype on the caller's stack, as an opaque
    pointer (an intrinsic's result; the intrinsics that take it bitcast it back to
    ``[count x vector]*``, and LLVM keeps the block in registers)."""
    block_type = ir.ArrayType(vector_type(context, array_type, vector_bytes), count)
    block = cgutils.alloca_once(builder, block_type)
    builder.store(ir.Constant(block_type, None), block)
    return builder.bitcast(block, cgutils.voidptr_t)
