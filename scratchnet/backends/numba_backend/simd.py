"""LLVM IR building blocks for the kernels that write their vector code by hand.

Numba's loop vectoriser leaves some hot loops scalar (short trip counts, possible aliasing, a
loop-carried block of accumulators), so direct_conv.py and sparse_linear.py emit the vector
operations themselves from small ``@intrinsic`` functions. These helpers are the parts those
intrinsics share: vectors of ``lanes(dtype)`` values in a 256-bit register (AVX2, which every
x86-64 machine this project runs on has), element addresses in a flat array, broadcasts and
``llvm.fmuladd``.
"""
import numpy as np
from llvmlite import ir
from numba.core import cgutils

__all__ = ["VECTOR_BYTES", "lanes", "vector_type", "fmuladd", "splat", "element_pointer",
           "vector_pointer", "zeroed_block"]

VECTOR_BYTES = 32  # AVX2's 256-bit registers


def lanes(dtype):
    """Values per vector register: 8 float32, 4 float64."""
    return VECTOR_BYTES // np.dtype(dtype).itemsize


def vector_type(context, array_type):
    """The LLVM vector of ``lanes`` elements of a Numba array type's dtype."""
    element = context.get_value_type(array_type.dtype)
    return ir.VectorType(element, lanes(str(array_type.dtype)))


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


def zeroed_block(context, builder, array_type, count):
    """``count`` zeroed vectors of ``array_type``'s dtype on the caller's stack, as an opaque
    pointer (an intrinsic's result; the intrinsics that take it bitcast it back to
    ``[count x vector]*``, and LLVM keeps the block in registers)."""
    block_type = ir.ArrayType(vector_type(context, array_type), count)
    block = cgutils.alloca_once(builder, block_type)
    builder.store(ir.Constant(block_type, None), block)
    return builder.bitcast(block, cgutils.voidptr_t)
