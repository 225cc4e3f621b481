"""scratchnet's benchmark suite: ``python -m benchmarks`` (``--help`` lists the options).

What it measures, and where:

- ``training_step``: training-step and batch-1000 inference throughput of every model, each
  scratchnet backend against torch from identical weights on identical MNIST batches, rounds
  interleaved in one process (``timing``), after a gradient check against torch (``parity``);
- ``ops``: forward and backward time of each op at the shapes the models use;
- ``isolated``: things that need a fresh process: JIT compile time (cold and warm Numba cache)
  and peak memory of a training run;
- ``time_to_accuracy``: one MNIST epoch of digitcnn per framework, wall time and test accuracy;
- ``machine`` (CPU, versions, thread pools, float32 GEMM peak), ``flops`` (work per sample from
  layer shapes), ``workload`` (tutorial recipes, data, losses, optimizers);
- ``report``: the stdout tables, ``results.json``, ``RESULTS.md`` (headline table first) and
  ``ratios.png``.

Ad-hoc runs write to ./benchmark-results (or --out); ``--publish`` replaces the published run,
benchmarks/results/ and benchmarks/RESULTS.md.
"""
