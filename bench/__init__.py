"""Benchmarks of pinn-ng: asv suites (``benchmarks_*.py``) and stand-alone scripts.

asv imports every module of this package (``benchmark_dir`` in ``asv.conf.json``), so modules
here do no work at import: scripts keep theirs under ``if __name__ == "__main__":`` and the
JAX setup (float64, compilation) happens in each benchmark's ``setup``.  Shared pieces:
``bench._timing`` (median-of-repeats timing, peak memory: :mod:`pinn_ng.pipeline.timing`) and
``bench._cases`` (the sizes and the compiled functions measured, built once for the asv suites,
the scripts and reused by later suites such as ``benchmarks_optim.py``).
:mod:`pinn_ng.pipeline.nystrom_table` is the one Nyström timing harness: the pipeline's
appendix-B table (``pinn-ng nystrom-table``), the asv ``NystromVariants`` / ``NystromRatio``
suites and ``gpu_check.py`` share its solves and kernel.  The library (``pinn_ng``) never
imports ``bench``.
"""
