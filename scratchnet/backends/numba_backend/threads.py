"""Which thread pool runs the ``prange`` loops: Numba's own choice unless told otherwise.

Measured on the 2-core target machine with ``python -m benchmarks`` (numba and torch in one
process), while a niced training run of another job shared the cores on and off:

- Numba's default layer there is ``omp`` (GNU OpenMP; torch ships its *own* libgomp, so the
  process holds two OpenMP pools whose workers spin after each parallel region). When the
  other job was light, ``omp`` trained fastest: digitcnn 1.11x torch against 0.85x under
  ``workqueue``, mitxcnn 1.01x against 0.72x, lenet 1.36x against 0.80x (same minutes,
  back-to-back runs); spinning workers answer the next launch in ~8 µs.
- When the other job was heavy, spinning workers stalled each other's barriers: a bare 2-chunk
  launch took 8 µs to 5.8 ms, digitcnn's fused first layer 12.2 ms against 3.8 ms under
  ``workqueue`` (Numba's own pool, workers sleep on a semaphore, ~50 µs per launch), the whole
  digitcnn step 112 ms against 44 ms. ``omp`` with passive waiting (``omp-passive``) was in
  between.

The robust part of the fix is elsewhere: small work never launches the pool at all
(``activation.PARALLEL_MIN_WORK``, ``linear.PARALLEL_MIN_MACS``: the MLPs' losses, activations
and optimizer updates run on the calling thread, only their larger GEMMs use the pool), and a
conv model's step launches it only a handful of times (fused kernels). So the default keeps
Numba's choice, and ``SCRATCHNET_THREADING_LAYER`` picks another: ``workqueue`` for a machine
shared with other busy jobs, ``omp-passive`` (OpenMP whose idle workers sleep; the variable is
set only while Numba loads its libgomp, so torch's pool keeps its own settings), ``omp`` or
``tbb``. The layer is fixed once per process at the first parallel launch, so the choice is
applied at import of the numba backend, and only when the user has not chosen
(``NUMBA_THREADING_LAYER`` unset, ``numba.config.THREADING_LAYER`` still "default", no
parallel kernel run yet).
"""
import os

import numba

PREFERRED_LAYER = "default"


def _start_pool(layer):
    from numba.np.ufunc import parallel

    passive = layer == "omp-passive"
    layer = "omp" if passive else layer
    numba.config.THREADING_LAYER = layer
    if not passive:
        parallel._launch_threads()
        return
    saved = os.environ.get("OMP_WAIT_POLICY")
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        parallel._launch_threads()
    finally:
        if saved is None:
            del os.environ["OMP_WAIT_POLICY"]
        else:
            os.environ["OMP_WAIT_POLICY"] = saved


def configure_threading_layer():
    """Select and start the thread pool if nobody else has; returns the layer configured."""
    wanted = os.environ.get("SCRATCHNET_THREADING_LAYER", PREFERRED_LAYER).strip().lower()
    if "NUMBA_THREADING_LAYER" in os.environ or wanted == "default":
        return numba.config.THREADING_LAYER
    try:
        from numba.np.ufunc import parallel
        started = parallel._is_initialized
    except (ImportError, AttributeError):
        return numba.config.THREADING_LAYER
    if started or numba.config.THREADING_LAYER != "default" or numba.config.DISABLE_JIT:
        return numba.config.THREADING_LAYER
    try:
        _start_pool(wanted)
    except (ValueError, ImportError, OSError):
        # e.g. no OpenMP runtime on this platform
        numba.config.THREADING_LAYER = "default"
        if wanted != "workqueue":
            try:
                _start_pool("workqueue")
            except (ValueError, ImportError, OSError):
                numba.config.THREADING_LAYER = "default"
    return numba.config.THREADING_LAYER


configure_threading_layer()
