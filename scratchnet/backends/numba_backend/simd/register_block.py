"""A block of ROWS × VECTORS wide vector accumulators, for products along a contiguous axis.

    acc[i, j·V : (j+1)·V]  +=  s[i] · v[j·V : (j+1)·V]        i < ROWS, j < VECTORS

where the ROWS scalars ``s[i]`` are broadcast and the VECTORS·V values ``v`` are contiguous
(V = lanes of a 512-bit register: 16 float32, 8 float64). With ROWS = 6 and VECTORS = 4 the
block's 24 accumulators, the 4 loaded vectors and the broadcast scalar stay in AVX-512's 32
registers, so a loop of ``multiply_add`` calls reads each operand once and writes nothing until
the block is flushed (``add_rows`` or ``store_transposed``). Seven rows would fill the 32
registers exactly but for the broadcast: inlined into a larger kernel, LLVM then spilled the
accumulators on every step. The filter-vector convolution (simd/conv.py) is a loop around
these intrinsics.

Why intrinsics: written as Numba loops over a small local array, the accumulators live in
memory (an array is a heap object to LLVM), and the loop vectoriser does not keep a 7 × 4
block in registers. Here the block is a stack array accessed at constant indices, which LLVM
promotes to registers. Sums run in the order of the calls, each step one ``llvm.fmuladd``.

Arrays are passed by address (``a.ctypes.data``) and element index; ``like`` is any array of
the dtype, used only for typing. The caller keeps every array alive and in bounds.
"""
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .vectors import (WIDE_VECTOR_BYTES, block_vectors, element_and_vector, fmuladd,
                      new_block_intrinsic, pointer, slot, splat, vector_pointer)

__all__ = ["ROWS", "VECTORS", "columns", "new_block", "multiply_add", "add_rows",
           "store_transposed"]

ROWS = 6
VECTORS = 4


def columns(dtype):
    """Values along the vector axis per block: VECTORS · lanes (64 float32, 32 float64)."""
    import numpy as np
    return VECTORS * WIDE_VECTOR_BYTES // np.dtype(dtype).itemsize


# a zeroed block (an opaque pointer to the caller's stack) for arrays of like's dtype
new_block = new_block_intrinsic(WIDE_VECTOR_BYTES, ROWS * VECTORS)


@intrinsic
def multiply_add(typingctx, block, like, v_address, v_at, s_address, s_index_address, s_add):
    """acc[i, j] += s[s_index[i] + s_add] · v[v_at + j·V : v_at + (j+1)·V] for i < ROWS,
    j < VECTORS; s_index: ROWS int64 offsets."""
    sig = types.void(block, like, v_address, v_at, s_address, s_index_address, s_add)

    def codegen(context, builder, signature, args):
        block_ptr, _, v_addr, v_at_v, s_addr, s_index_addr, s_add_v = args
        element, vector = element_and_vector(context, like, WIDE_VECTOR_BYTES)
        acc_block = block_vectors(builder, block_ptr, vector, ROWS * VECTORS)
        fma = fmuladd(builder, vector)
        align = WIDE_VECTOR_BYTES // vector.count  # one element's: the loads are unaligned
        loaded = []
        for j in range(VECTORS):
            at = builder.add(v_at_v, ir.Constant(v_at_v.type, j * vector.count))
            loaded.append(builder.load(vector_pointer(builder, v_addr, element, at, vector),
                                       align=align))
        i64 = ir.IntType(64)
        for i in range(ROWS):
            offset = builder.load(pointer(builder, s_index_addr, i64, ir.Constant(i64, i)))
            scalar = builder.load(pointer(builder, s_addr, element, builder.add(offset, s_add_v)))
            broadcast = splat(builder, vector, scalar)
            for j in range(VECTORS):
                acc = slot(builder, acc_block, i * VECTORS + j)
                builder.store(builder.call(fma, [broadcast, loaded[j], builder.load(acc)]), acc)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def add_rows(typingctx, block, like, out_address, row_length, col0, row0, count):
    """out[(row0 + i)·row_length + col0 + j·V : ... + V] += acc[i, j] for i < count (<= ROWS),
    then zero the block."""
    sig = types.void(block, like, out_address, row_length, col0, row0, count)

    def codegen(context, builder, signature, args):
        block_ptr, _, out_addr, length_v, col0_v, row0_v, count_v = args
        element, vector = element_and_vector(context, like, WIDE_VECTOR_BYTES)
        acc_block = block_vectors(builder, block_ptr, vector, ROWS * VECTORS)
        index = col0_v.type
        align = WIDE_VECTOR_BYTES // vector.count
        for i in range(ROWS):
            row = builder.add(row0_v, ir.Constant(index, i))
            inside = builder.icmp_signed("<", ir.Constant(index, i), count_v)
            with builder.if_then(inside, likely=True):
                for j in range(VECTORS):
                    acc = slot(builder, acc_block, i * VECTORS + j)
                    at = builder.add(builder.add(builder.mul(row, length_v), col0_v),
                                     ir.Constant(index, j * vector.count))
                    out = vector_pointer(builder, out_addr, element, at, vector)
                    builder.store(builder.fadd(builder.load(out, align=align), builder.load(acc)),
                                  out, align=align)
            for j in range(VECTORS):
                builder.store(ir.Constant(vector, None), slot(builder, acc_block, i * VECTORS + j))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def store_transposed(typingctx, block, like, bias_address, col0, out_address, plane,
                     row_index_address):
    """out[(col0 + c)·plane + row_index[i]] = acc[i, c] + bias[col0 + c] for i < ROWS and
    c < VECTORS·V (one value per store: the block written transposed), then zero the block."""
    sig = types.void(block, like, bias_address, col0, out_address, plane, row_index_address)

    def codegen(context, builder, signature, args):
        block_ptr, _, bias_addr, col0_v, out_addr, plane_v, rows_addr = args
        element, vector = element_and_vector(context, like, WIDE_VECTOR_BYTES)
        acc_block = block_vectors(builder, block_ptr, vector, ROWS * VECTORS)
        index = col0_v.type
        i64 = ir.IntType(64)
        align = WIDE_VECTOR_BYTES // vector.count
        biases = []
        for j in range(VECTORS):
            at = builder.add(col0_v, ir.Constant(index, j * vector.count))
            biases.append(builder.load(vector_pointer(builder, bias_addr, element, at, vector),
                                       align=align))
        for i in range(ROWS):
            row = builder.load(pointer(builder, rows_addr, i64, ir.Constant(i64, i)))
            for j in range(VECTORS):
                acc = slot(builder, acc_block, i * VECTORS + j)
                values = builder.fadd(builder.load(acc), biases[j])
                for lane in range(vector.count):
                    c = builder.add(col0_v, ir.Constant(index, j * vector.count + lane))
                    at = builder.add(builder.mul(c, plane_v), row)
                    value = builder.extract_element(values, ir.Constant(ir.IntType(32), lane))
                    builder.store(value, pointer(builder, out_addr, element, at))
                builder.store(ir.Constant(vector, None), acc)
        return context.get_dummy_value()

    return sig, codegen
