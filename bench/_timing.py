"""The benchmarks' timing helpers: :mod:`pinn_ng.pipeline.timing`, where the pipeline's Nyström
table (an installed ``pinn-ng nystrom-table``) finds them too."""

from pinn_ng.pipeline.timing import (  # noqa: F401
    MiB,
    Timing,
    compile_jitted,
    device_peak_bytes,
    interleaved_timings,
    maxrss_bytes,
    median_time,
    peak_memory,
    relative_error,
    run_once,
    xla_peak_bytes,
)
