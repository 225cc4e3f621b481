"""The Numba backend's reusable scratch memory: one buffer per thread, carved into arrays."""
import threading

import numpy as np

from scratchnet.backends.numba_backend.common import scratch_arrays

SHAPES = [(2, 3), (0, 5), (4, 1, 3), (7,)]


def test_arrays_have_the_shapes_asked_for_aligned_and_apart():
    arrays = scratch_arrays(SHAPES, np.float32, [False] * len(SHAPES))
    assert [a.shape for a in arrays] == SHAPES
    assert all(a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
               for a in arrays)
    assert all(a.ctypes.data % 64 == 0 for a in arrays if a.size)
    for i, a in enumerate(arrays):
        for b in arrays[i + 1:]:
            assert not np.shares_memory(a, b)


def test_the_next_call_reuses_the_memory_and_zeroes_only_what_it_is_asked_to():
    first = scratch_arrays(SHAPES, np.float64, [False] * len(SHAPES))
    for a in first:
        a.fill(5)
    second = scratch_arrays(SHAPES, np.float64, [False, False, True, False])
    assert all(np.shares_memory(a, b) for a, b in zip(first, second) if a.size)
    assert (second[2] == 0).all()
    assert (second[0] == 5).all() and (second[3] == 5).all()


def test_a_larger_request_gets_a_larger_buffer():
    small = scratch_arrays([(10,)], np.float32, [False])
    big = scratch_arrays([(1 << 20,), (3,)], np.float32, [True, True])
    assert big[0].shape == (1 << 20,) and (big[0] == 0).all() and (big[1] == 0).all()
    again = scratch_arrays([(10,)], np.float32, [False])
    assert again[0].shape == small[0].shape


def test_each_thread_has_its_own_buffer():
    here = scratch_arrays([(100,)], np.float32, [False])[0]
    there = []
    worker = threading.Thread(target=lambda: there.append(
        scratch_arrays([(100,)], np.float32, [False])[0]))
    worker.start()
    worker.join()
    assert not np.shares_memory(here, there[0])
