"""The CPU BLAS: its thread count, and a GEMM backend for K = J Jᵀ (XLA's dot or the BLAS).

Threads
    On the CPU, jaxlib runs Cholesky, triangular solves, QR, SVD and eigh through SciPy's
    OpenBLAS, while XLA runs everything else on its own thread pool.  When both pools want
    every core, OpenBLAS's threads spin against XLA's, and a factorisation inside a jitted step
    runs many times slower than with one OpenBLAS thread (``bench/optim_speed.py`` shows the
    effect on whole ENGD-W steps).  Nothing changes at import: the CLI, the benchmarks and the
    tests call :func:`limit_blas_threads` explicitly.  The BLAS GEMM backend below raises the
    limit to the cores the process owns for the duration of its own product only (XLA's pool
    waits for the product's result meanwhile), then puts it back.

GEMM backend
    K's lower triangle, Σ_l J_l J_lᵀ over J's column blocks, is the largest product of an
    ENGD-W or SPRING step.  :func:`kernel_lower` computes it by XLA's dot
    (:func:`pinn_ng.gram.kernel_lower_from_jacobian`'s row blocks) or by the BLAS SciPy links
    (``?syrk``, one call per column block, accumulated in place), called from inside the jitted
    program through an XLA FFI handler that reads XLA's buffers where they lie: J is not
    copied, and K is written straight into XLA's result buffer.  (A ``jax.pure_callback``
    copies every operand, J included, before the callback sees it.)

    Which one: ``PINN_NG_BLAS=xla|blas|auto`` (default ``auto``) or the ``backend`` argument.
    ``auto`` times both on a K of a fixed size once per machine (CPU model and flags, BLAS
    library, thread count) and caches the choice beside JAX's persistent compilation cache
    (else in ``~/.cache/pinn_ng``); BLAS is chosen only when it is clearly faster, so that the
    backend costs nothing where XLA is as fast.  Off the CPU, always XLA.

Cholesky
    The step's factorisation of K + λI is LAPACK's ``?potrf`` either way; jaxlib calls it with
    the process's single LAPACK thread, :func:`cholesky_lower` through a second FFI handler
    with the run's cores (the same thread switch as the GEMM), in place in XLA's buffer.
    ``auto`` does so for large matrices (:data:`AUTO_MIN_CHOLESKY_ORDER`) when the run owns
    more than one core.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import threading

_LIMITER = None
BACKENDS = ("xla", "blas", "auto")
ENV = "PINN_NG_BLAS"
THREADS_ENV = "PINN_NG_BLAS_THREADS"
# auto takes BLAS only below this fraction of XLA's time: a choice made on a noisy machine
# must not make the step slower where both are about as fast
AUTO_MARGIN = 0.95
# the calibration's K: J of 1536 x 4096 (float64), large enough for both to reach their rate
CALIBRATION_SHAPE = (1536, 4096)
#: ``auto`` keeps XLA for products under this many multiply-adds (N² · P): each BLAS call sets
#: OpenBLAS's thread count and back, a fixed cost of milliseconds that small products never
#: earn back.  ``blas`` asked for by name is used at any size.
AUTO_MIN_FLOPS = 2e10
_FFI_TARGET = "pinn_ng_blas_syrk_lower"
_POTRF_TARGET = "pinn_ng_blas_potrf_lower"
#: ``auto`` factors matrices of at least this order with the BLAS's ``?potrf`` on the run's
#: cores: below it the second thread saves less than switching the thread count costs.
AUTO_MIN_CHOLESKY_ORDER = 2000


def limit_blas_threads(n: int = 1):
    """Limit the process's BLAS/LAPACK thread pools (OpenBLAS, MKL, ...) to ``n`` threads.

    Uses ``threadpoolctl``, so it works after NumPy/SciPy are loaded.  Returns the limiter;
    ``limiter.restore_original_limits()`` undoes it.
    """
    global _LIMITER
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n must be a positive int, got {n!r}")
    from threadpoolctl import threadpool_limits

    _LIMITER = threadpool_limits(limits=n, user_api="blas")
    return _LIMITER


def requested_backend(backend: str | None = None) -> str:
    """``backend``, else ``$PINN_NG_BLAS``, else ``"auto"``; one-line ValueError if unknown."""
    where = "backend"
    if backend is None:
        backend, where = os.environ.get(ENV) or "auto", ENV
    if backend not in BACKENDS:
        raise ValueError(f"{where}={backend!r} is not a GEMM backend; valid: {', '.join(BACKENDS)}")
    return backend


def gemm_threads() -> int:
    """BLAS threads for the GEMM backend's products: ``$PINN_NG_BLAS_THREADS``, else the
    cores this process may run on."""
    value = os.environ.get(THREADS_ENV)
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{THREADS_ENV}={value!r} must be a positive integer")
        return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def env_error() -> str | None:
    """Why ``$PINN_NG_BLAS`` or ``$PINN_NG_BLAS_THREADS`` is unusable (one line), or None."""
    try:
        requested_backend()
        gemm_threads()
    except ValueError as err:
        return str(err)
    return None


def kernel_backend(backend: str | None = None, parts=None) -> str:
    """The backend K's products use here: ``"xla"`` or ``"blas"`` (``auto`` resolved by the
    cached calibration, and XLA for ``parts`` (J's column blocks) smaller than
    :data:`AUTO_MIN_FLOPS`; always ``"xla"`` off the CPU)."""
    import jax

    backend = requested_backend(backend)
    if jax.default_backend() != "cpu" or backend == "xla":
        return "xla"
    if backend == "blas":
        _ffi_registered()
        return "blas"
    if parts is not None:
        parts = [parts] if hasattr(parts, "shape") else list(parts)
        if parts[0].shape[0] ** 2 * sum(p.shape[1] for p in parts) < AUTO_MIN_FLOPS:
            return "xla"
    return calibration()["backend"]


# ----------------------------------------------------------------------------- the product


def kernel_lower(parts, backend: str | None = None):
    """Lower triangle of Σ_l J_l J_lᵀ (strictly upper part zero) for J's column blocks
    ``parts`` (each (N, P_l), one dtype, float32 or float64), by ``backend`` (see
    :func:`kernel_backend`).  Works inside ``jit``; not differentiable (K never is here)."""
    import jax
    import jax.numpy as jnp

    parts = [parts] if hasattr(parts, "shape") else list(parts)
    dtype = parts[0].dtype
    if (kernel_backend(backend, parts) == "xla"
            or dtype not in (jnp.float32, jnp.float64)):
        # pinn_ng.gram's row blocks are the memory-lean XLA route; this one is the plain product
        return jnp.tril(sum(j @ j.T for j in parts))
    n = parts[0].shape[0]
    call = jax.ffi.ffi_call(_FFI_TARGET, jax.ShapeDtypeStruct((n, n), dtype))
    return call(*parts)


def cholesky_backend(backend: str | None = None, n: int | None = None) -> str:
    """The backend :func:`cholesky_lower` uses for an ``n`` x ``n`` matrix: ``"xla"``
    (jaxlib's LAPACK call, the process's LAPACK threads) or ``"blas"`` (``?potrf`` through the
    FFI handler, :func:`gemm_threads` threads).  ``auto`` takes the BLAS from
    :data:`AUTO_MIN_CHOLESKY_ORDER` on (``n`` None: any order) when the run owns more than one
    core.  Always ``"xla"`` off the CPU."""
    import jax

    backend = requested_backend(backend)
    if jax.default_backend() != "cpu" or backend == "xla":
        return "xla"
    if backend == "auto" and ((n is not None and n < AUTO_MIN_CHOLESKY_ORDER)
                              or gemm_threads() < 2):
        return "xla"
    _ffi_registered()
    return "blas"


def cholesky_lower(a, backend: str | None = None):
    """Lower Cholesky factor L (strictly upper part zero) of the symmetric positive definite
    ``a``, read from its lower triangle; NaN everywhere when the factorisation fails (as
    :func:`jax.lax.linalg.cholesky`).  Works inside ``jit``; not differentiable."""
    import jax
    import jax.numpy as jnp

    if (a.ndim != 2 or cholesky_backend(backend, a.shape[-1]) == "xla"
            or a.dtype not in (jnp.float32, jnp.float64)):
        return jax.lax.linalg.cholesky(a, symmetrize_input=False)
    # the factor overwrites its input's buffer (XLA copies ``a`` first only where it is used
    # again): no second N x N buffer
    call = jax.ffi.ffi_call(_POTRF_TARGET, jax.ShapeDtypeStruct(a.shape, a.dtype),
                            vmap_method="sequential", input_output_aliases={0: 0})
    return call(a)


# ----------------------------------------------------------------------------- FFI handler
# The handler follows XLA's FFI C API (xla/ffi/api/c_api.h, shipped with jaxlib): XLA calls it
# with a call frame that holds the buffers of the operands and of the result.


class _ExtBase(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("type", ctypes.c_int),
                ("next", ctypes.c_void_p)]


class _ApiVersion(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
                ("major_version", ctypes.c_int), ("minor_version", ctypes.c_int)]


class _Metadata(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("api_version", _ApiVersion),
                ("traits", ctypes.c_uint32), ("state_type_id", ctypes.c_int64)]


class _MetadataExt(ctypes.Structure):
    _fields_ = [("extension_base", _ExtBase), ("metadata", ctypes.POINTER(_Metadata))]


class _Buffer(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
                ("dtype", ctypes.c_int), ("data", ctypes.c_void_p), ("rank", ctypes.c_int64),
                ("dims", ctypes.POINTER(ctypes.c_int64))]


class _List(ctypes.Structure):  # XLA_FFI_Args and XLA_FFI_Rets share this layout
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
                ("size", ctypes.c_int64), ("types", ctypes.POINTER(ctypes.c_int)),
                ("items", ctypes.POINTER(ctypes.POINTER(_Buffer)))]


class _Attrs(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
                ("size", ctypes.c_int64), ("types", ctypes.c_void_p),
                ("names", ctypes.c_void_p), ("attrs", ctypes.c_void_p)]


class _CallFrame(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.POINTER(_ExtBase)),
                ("api", ctypes.c_void_p), ("ctx", ctypes.c_void_p), ("stage", ctypes.c_int),
                ("args", _List), ("rets", _List), ("attrs", _Attrs), ("future", ctypes.c_void_p)]


class _ErrorCreateArgs(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
                ("message", ctypes.c_char_p), ("errc", ctypes.c_int)]


_FFI_API_VERSION = (0, 3)  # XLA_FFI_API_MAJOR/MINOR of the c_api.h these structures follow
_EXT_METADATA, _STAGE_EXECUTE, _ERR_INTERNAL = 1, 3, 13
_F32, _F64 = 11, 12
_HANDLER = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(_CallFrame))
_STATE = {}  # the registered handler (kept alive), the thread-pool controller, the calibration
_LOCK = threading.Lock()


def _array(buf: _Buffer, np_dtype):
    import numpy as np

    shape = tuple(buf.dims[i] for i in range(buf.rank))
    size = int(np.prod(shape)) * np.dtype(np_dtype).itemsize
    raw = (ctypes.c_char * size).from_address(buf.data)  # a view of XLA's buffer, no copy
    return np.frombuffer(raw, dtype=np_dtype).reshape(shape)


def _error(frame, message: str):
    # XLA_FFI_Api: struct_size, extension_start, api_version (24 bytes), internal_api, then
    # the function pointer XLA_FFI_Error_Create
    create_at = frame.contents.api + 8 + 8 + ctypes.sizeof(_ApiVersion) + 8
    create = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(_ErrorCreateArgs))(
        ctypes.c_void_p.from_address(create_at).value)
    args = _ErrorCreateArgs(ctypes.sizeof(_ErrorCreateArgs), None,
                            f"pinn_ng BLAS: {message}".encode(), _ERR_INTERNAL)
    return create(ctypes.byref(args))


class _GemmThreads:
    """The BLAS's thread count set to :func:`gemm_threads` for one call, then put back."""

    def __enter__(self):
        self.libs = _thread_controllers()
        self.before = [lib.num_threads for lib in self.libs]
        threads = gemm_threads()
        for lib in self.libs:
            lib.set_num_threads(threads)

    def __exit__(self, *exc):
        for lib, n in zip(self.libs, self.before):
            lib.set_num_threads(n)


def _syrk_lower_into(out, parts):
    """out (C order) ← lower triangle of Σ parts_l parts_lᵀ, strictly upper part zero.

    C-ordered J_l is the Fortran-ordered J_lᵀ, and the lower triangle of C-ordered K is the
    upper triangle of its Fortran-ordered transpose: ``?syrk`` with trans=1 on those views
    reads J and writes K in place, without copies.
    """
    from scipy.linalg import blas

    k_f = out.T
    k_f.fill(0.0)
    syrk = blas.get_blas_funcs("syrk", dtype=out.dtype)
    with _GemmThreads():
        for part in parts:
            res = syrk(1.0, part.T, beta=1.0, c=k_f, trans=1, lower=0, overwrite_c=1)
            if res.ctypes.data != k_f.ctypes.data:  # never expected: the wrapper copied
                k_f[...] = res


def _potrf_lower_into(out, a):
    """out (C order) ← lower Cholesky factor of ``a`` (its lower triangle read), strictly
    upper part zero; NaN if ``a`` is not numerically positive definite.

    The lower triangle of C-ordered ``a`` is the upper triangle of its Fortran-ordered
    transpose, so ``?potrf`` with lower=0 on ``out``'s Fortran view factors it in place.
    """
    import numpy as np
    from scipy.linalg import lapack

    if out.ctypes.data != a.ctypes.data:  # XLA aliases them unless ``a`` is used again
        out[...] = a
    potrf = lapack.get_lapack_funcs("potrf", dtype=out.dtype)
    with _GemmThreads():
        res, info = potrf(out.T, lower=0, clean=1, overwrite_a=1)
    if res.ctypes.data != out.ctypes.data:  # never expected: the wrapper copied
        out.T[...] = res
    if info != 0:
        out.fill(np.nan)


def _thread_controllers():
    libs = _STATE.get("libs")
    if libs is None:
        import scipy.linalg.blas  # noqa: F401  (loads SciPy's BLAS, so that it is found)
        from threadpoolctl import ThreadpoolController

        libs = _STATE["libs"] = ThreadpoolController().select(user_api="blas").lib_controllers
    return libs


def _syrk_handler(frame, dt):
    parts = [_array(frame.args.items[i].contents, dt) for i in range(frame.args.size)]
    _syrk_lower_into(_array(frame.rets.items[0].contents, dt), parts)


def _potrf_handler(frame, dt):
    _potrf_lower_into(_array(frame.rets.items[0].contents, dt),
                      _array(frame.args.items[0].contents, dt))


def _handler(frame_p, compute=_syrk_handler):
    try:
        frame = frame_p.contents
        ext = frame.extension_start
        if ext and ext.contents.type == _EXT_METADATA:  # XLA asks which FFI API we follow
            meta = ctypes.cast(ext, ctypes.POINTER(_MetadataExt)).contents.metadata.contents
            meta.api_version.major_version, meta.api_version.minor_version = _FFI_API_VERSION
            meta.traits = 0
            return None
        if frame.stage != _STAGE_EXECUTE:
            return None
        import numpy as np

        kinds = {_F32: np.float32, _F64: np.float64}
        out_buf = frame.rets.items[0].contents
        if out_buf.dtype not in kinds:
            return _error(frame_p, f"dtype code {out_buf.dtype} is not float32/float64")
        compute(frame, kinds[out_buf.dtype])
        return None
    except Exception as err:  # noqa: BLE001  (an exception must not cross into XLA)
        return _error(frame_p, f"{type(err).__name__}: {err}")


def _ffi_registered():
    with _LOCK:
        if "handler" not in _STATE:
            import jax

            handlers = {_FFI_TARGET: _HANDLER(_handler),
                        _POTRF_TARGET: _HANDLER(lambda f: _handler(f, _potrf_handler))}
            for target, handler in handlers.items():
                jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform="cpu")
            _STATE["handler"] = handlers


# ----------------------------------------------------------------------------- calibration


def machine_key() -> str:
    """What the calibration depends on: CPU model and flags, the BLAS library and threads,
    jaxlib's version (hashed)."""
    import jaxlib

    model, flags = "", ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(value.split()))
    except OSError:
        import platform

        model = platform.processor() or platform.machine()
    libs = [(lib.internal_api, lib.version, getattr(lib, "architecture", None))
            for lib in _thread_controllers()]
    text = json.dumps([model, flags, libs, gemm_threads(), jaxlib.__version__])
    return f"{model} | " + hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path() -> str:
    """The calibration cache: beside JAX's persistent compilation cache where one is set
    (``JAX_COMPILATION_CACHE_DIR``), else ``$XDG_CACHE_HOME/pinn_ng`` (``~/.cache/pinn_ng``)."""
    import jax

    where = os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir
    if where:
        parent = os.path.dirname(os.path.abspath(os.path.expanduser(where)).rstrip(os.sep))
        return os.path.join(parent, "pinn_ng_blas_calibration.json")
    home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(home, "pinn_ng", "blas_calibration.json")


def time_backends(shape=CALIBRATION_SHAPE, rounds: int = 3, dtype="float64") -> dict:
    """Seconds of K's lower triangle from a random J of ``shape`` by each backend, the two
    interleaved ``rounds`` times after a warm-up; the median of each."""
    import time

    import jax
    import numpy as np

    _ffi_registered()
    rng = np.random.default_rng(0)
    jac = jax.device_put(rng.standard_normal(shape).astype(dtype))
    fns = {b: jax.jit(lambda j, b=b: kernel_lower(j, backend=b)) for b in ("xla", "blas")}
    times = {b: [] for b in fns}
    for fn in fns.values():
        fn(jac).block_until_ready()
    for _ in range(rounds):
        for b, fn in fns.items():
            t0 = time.perf_counter()
            fn(jac).block_until_ready()
            times[b].append(time.perf_counter() - t0)
    return {b: float(np.median(t)) for b, t in times.items()}


def calibration(refresh: bool = False) -> dict:
    """The cached choice for this machine (``backend``, seconds of each, ``shape``,
    ``threads``), measured now if missing or ``refresh``."""
    key = machine_key()
    path = cache_path()
    if not refresh:
        if key in _STATE.get("calibration", {}):
            return _STATE["calibration"][key]
        try:
            with open(path) as fh:
                entry = json.load(fh).get(key)
            if entry and entry.get("backend") in ("xla", "blas"):
                _STATE.setdefault("calibration", {})[key] = entry
                return entry
        except (OSError, ValueError):
            pass
    # a thread of its own: this may run while a jitted function is being traced, and the
    # timed programs must run, not join that trace
    result = {}
    worker = threading.Thread(target=lambda: result.update(time_backends()))
    worker.start()
    worker.join()
    if not result:
        raise RuntimeError("the BLAS calibration failed (see the error above); set "
                           f"{ENV}=xla or {ENV}=blas to skip it")
    entry = {"backend": "blas" if result["blas"] < AUTO_MARGIN * result["xla"] else "xla",
             "xla_s": result["xla"], "blas_s": result["blas"],
             "shape": list(CALIBRATION_SHAPE), "threads": gemm_threads()}
    _STATE.setdefault("calibration", {})[key] = entry
    _write_cache(path, key, entry)
    return entry


def _write_cache(path: str, key: str, entry: dict) -> None:
    try:  # the cache is an optimisation: a read-only place only costs a calibration per run
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            with open(path) as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            data = {}
        data[key] = entry
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass
