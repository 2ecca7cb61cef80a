"""The GEMM backend for K = J Jᵀ (pinn_ng.blas): XLA's dot and the BLAS agree with a dense
float64 reference, inside and outside jit; the env override, the calibration and its cache."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pinn_ng import blas, gram, optim, problems
from pinn_ng import models
from pinn_ng.residuals import ResidualFn

BACKENDS = ("xla", "blas")
EPS64 = float(np.finfo(np.float64).eps)


def column_blocks(seed, n=53, widths=(7, 19, 4)):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, p)) for p in widths]


def dense_k(parts):
    return sum(p @ p.T for p in parts)


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_kernel_lower_matches_dense_float64(backend, seed):
    parts = column_blocks(seed)
    ref = dense_k(parts)
    low = np.tril(np.ones(ref.shape, bool))
    fn = jax.jit(lambda ps: blas.kernel_lower(ps, backend=backend))
    for k in (fn([jnp.asarray(p) for p in parts]),  # jitted
              blas.kernel_lower([jnp.asarray(p) for p in parts], backend=backend)):  # eager
        k = np.asarray(k)
        assert k.dtype == np.float64 and k.shape == ref.shape
        # a sum of (N x P_l) products: rounding of a few eps relative to max |K|
        assert rel(np.where(low, k, 0.0), np.where(low, ref, 0.0)) <= 1e-12
        if backend == "blas":
            assert not np.any(np.triu(k, 1))  # the strictly upper part is zero


def test_kernel_lower_float32_both_backends():
    parts = column_blocks(2)
    ref = np.tril(dense_k(parts))
    for backend in BACKENDS:
        k = jax.jit(lambda ps, b=backend: blas.kernel_lower(ps, backend=b))(
            [jnp.asarray(p, jnp.float32) for p in parts])
        assert k.dtype == jnp.float32
        assert rel(np.tril(np.asarray(k, np.float64)), ref) <= 50 * np.finfo(np.float32).eps


@pytest.mark.parametrize("mirror,below", [(True, False), (False, False), (False, True)])
def test_gram_assembly_same_on_both_backends(mirror, below):
    parts = [jnp.asarray(p) for p in column_blocks(3, n=41)]
    extra = None
    if below:
        rng = np.random.default_rng(4)
        extra = (jnp.asarray(rng.standard_normal((6, 41))),
                 jnp.asarray(np.tril(rng.standard_normal((6, 6)))))
    out = {b: np.asarray(jax.jit(lambda ps, b=b: gram.kernel_lower_from_jacobian(
        ps, 3, mirror=mirror, below=extra, backend=b))(parts)) for b in BACKENDS}
    assert out["xla"].shape == out["blas"].shape
    low = np.tril(np.ones(out["xla"].shape, bool))
    valid = np.ones_like(low) if mirror else low  # mirror=False: only the lower part is defined
    ref = np.where(valid, out["xla"], 0.0)
    assert rel(np.where(valid, out["blas"], 0.0), ref) <= 1e-12
    if mirror:
        np.testing.assert_array_equal(out["blas"], out["blas"].T)


def test_blas_reads_xla_buffers_without_copy(monkeypatch):
    # the FFI handler's view of J is XLA's own buffer (a jit argument is passed through)
    seen = []
    real = blas._syrk_lower_into

    def spy(out, parts):
        seen.extend(p.ctypes.data for p in parts)
        return real(out, parts)

    monkeypatch.setattr(blas, "_syrk_lower_into", spy)
    jac = jnp.asarray(column_blocks(5, widths=(9,))[0])
    jax.jit(lambda j: blas.kernel_lower(j, backend="blas"))(jac).block_until_ready()
    assert seen == [jac.unsafe_buffer_pointer()]


@pytest.mark.slow  # two compilations of an ENGD-W update: 20-45 s on 2 busy cores
def test_engd_woodbury_step_same_on_both_backends(monkeypatch):
    problem = problems.get("poisson2d")
    init, apply = models.mlp((2, 6, 5, 1))
    rfn = ResidualFn(problem, apply)
    params = init(jax.random.PRNGKey(0))
    batch = problem.sample(jax.random.PRNGKey(1), 40, 20)
    updates, calls = {}, []
    real = blas._syrk_lower_into
    monkeypatch.setattr(blas, "_syrk_lower_into", lambda out, ps: calls.append(1) or real(out, ps))
    for backend in BACKENDS:  # chosen when the update is traced
        monkeypatch.setenv(blas.ENV, backend)
        opt = optim.engd_woodbury(rfn, 1e-3, learning_rate=1.0)
        u, _ = jax.jit(opt.update)(None, opt.init(params), params, batch=batch)
        updates[backend] = np.concatenate([np.ravel(x) for x in jax.tree.leaves(u)])
        assert bool(calls) == (backend == "blas")  # the step's K went through the BLAS
    # the damped solve amplifies K's rounding by at most cond(K + λI)
    assert np.linalg.norm(updates["blas"] - updates["xla"]) <= 1e-8 * np.linalg.norm(
        updates["xla"])


def test_env_override_and_bad_values(monkeypatch):
    for name in BACKENDS:
        monkeypatch.setenv(blas.ENV, name)
        assert blas.requested_backend() == name == blas.kernel_backend()
    assert blas.kernel_backend("xla") == "xla"  # the argument wins over the environment
    monkeypatch.setenv(blas.ENV, "mkl")
    with pytest.raises(ValueError, match="PINN_NG_BLAS='mkl'.*xla, blas, auto") as err:
        blas.requested_backend()
    assert "\n" not in str(err.value)
    monkeypatch.setenv(blas.THREADS_ENV, "0")
    with pytest.raises(ValueError, match="PINN_NG_BLAS_THREADS"):
        blas.gemm_threads()
    monkeypatch.setenv(blas.THREADS_ENV, "3")
    assert blas.gemm_threads() == 3


@pytest.mark.parametrize("times,choice", [({"xla": 1.0, "blas": 0.5}, "blas"),
                                          ({"xla": 1.0, "blas": 0.97}, "xla"),
                                          ({"xla": 0.5, "blas": 1.0}, "xla")])
def test_auto_calibrates_once_and_caches_beside_the_compilation_cache(
        monkeypatch, tmp_path, times, choice):
    monkeypatch.setenv(blas.ENV, "auto")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    monkeypatch.setitem(blas._STATE, "calibration", {})
    calls = []
    monkeypatch.setattr(blas, "time_backends", lambda: calls.append(1) or dict(times))
    assert blas.kernel_backend() == choice  # auto picks BLAS only when clearly faster
    path = tmp_path / "pinn_ng_blas_calibration.json"
    assert blas.cache_path() == str(path)
    entry = json.loads(path.read_text())[blas.machine_key()]
    assert entry["backend"] == choice and entry["xla_s"] == times["xla"]
    blas._STATE["calibration"].clear()  # a new process: read from the file, not re-timed
    assert blas.kernel_backend() == choice and calls == [1]
    assert blas.calibration(refresh=True)["backend"] == choice and calls == [1, 1]


def test_time_backends_runs_both_on_a_small_k():
    t = blas.time_backends(shape=(64, 96), rounds=1)
    assert set(t) == set(BACKENDS) and all(v > 0 for v in t.values())


@pytest.mark.parametrize("var,value", [(blas.ENV, "mkl"), (blas.THREADS_ENV, "two")])
def test_cli_reports_a_bad_override_in_one_line(monkeypatch, capsys, tmp_path, var, value):
    from pinn_ng import cli

    monkeypatch.setenv(var, value)
    assert blas.env_error() is not None
    code = cli.main(["run", "--problem", "poisson2d", "--optimizer", "sgd", "--max-steps", "1",
                     "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and var in err and not (tmp_path / "run").exists()


def test_auto_keeps_xla_for_small_products(monkeypatch):
    """auto takes the calibrated BLAS only above AUTO_MIN_FLOPS; blas by name at any size."""
    monkeypatch.setenv(blas.ENV, "auto")
    monkeypatch.setitem(blas._STATE, "calibration", {blas.machine_key(): {"backend": "blas"}})
    monkeypatch.setattr(blas, "calibration", lambda refresh=False: {"backend": "blas"})
    small = [jax.ShapeDtypeStruct((480, 1185), jnp.float64)]
    paper = [jax.ShapeDtypeStruct((3500, p), jnp.float64) for p in (384, 4160, 3120, 2352, 49)]
    assert blas.kernel_backend(None, small) == "xla"
    assert blas.kernel_backend(None, paper) == "blas"
    assert blas.kernel_backend(None) == "blas"  # no sizes given: the calibration decides
    assert blas.kernel_backend("blas", small) == "blas"


def spd(seed, n=61, dtype=np.float64):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n + 7))
    return (a @ a.T / n + 1e-3 * np.eye(n)).astype(dtype)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-4)])
@pytest.mark.parametrize("seed", [0, 1])
def test_cholesky_lower_both_backends_match_numpy(dtype, tol, seed):
    """The BLAS's ?potrf through the FFI handler, jitted and eager, against NumPy's factor of
    a fresh random SPD matrix; only the lower triangle is read, the upper part comes out 0."""
    a = spd(seed, dtype=dtype)
    ref = np.linalg.cholesky(a.astype(np.float64))
    # garbage above the diagonal: both backends must read the lower triangle only
    a_low = np.tril(a) + np.triu(np.full_like(a, 7.0), 1)
    for backend in BACKENDS:
        fn = jax.jit(lambda m, b=backend: blas.cholesky_lower(m, backend=b))
        for chol in (fn(jnp.asarray(a_low)), blas.cholesky_lower(jnp.asarray(a_low), backend)):
            chol = np.asarray(chol)
            assert chol.dtype == dtype
            assert rel(chol, ref) <= tol, backend
            assert not np.any(np.triu(chol, 1)), backend


def test_cholesky_lower_failure_is_nan_on_both_backends():
    a = spd(3)
    a[5, 5] = -1.0  # not positive definite
    for backend in BACKENDS:
        chol = np.asarray(jax.jit(lambda m, b=backend: blas.cholesky_lower(m, backend=b))(a))
        assert np.all(np.isnan(chol[np.tril_indices(len(a))])), backend  # as XLA's


def test_cholesky_solve_uses_the_blas_factor_and_keeps_its_jitter_policy(monkeypatch):
    """With PINN_NG_BLAS=blas, the solver's factorisations (a failing first try included)
    go through ?potrf and give XLA's u, jitter and rung."""
    calls = []
    real = blas._potrf_lower_into
    monkeypatch.setattr(blas, "_potrf_lower_into", lambda out, a: calls.append(1) or real(out, a))
    rng = np.random.default_rng(4)
    j = rng.standard_normal((40, 12))
    k = jnp.asarray(np.tril(j @ j.T))  # rank 12 < 40: K + 1e-16 I fails, the ladder climbs
    g = jnp.asarray(rng.standard_normal(40))
    out = {}
    for backend in BACKENDS:
        monkeypatch.setenv(blas.ENV, backend)
        sol = jax.block_until_ready(
            jax.jit(lambda k, g: optim.solvers.cholesky_solve(k, 1e-16, g))(k, g))
        out[backend] = sol
        assert bool(calls) == (backend == "blas")
    assert float(out["blas"].jitter) == float(out["xla"].jitter) > 0
    assert int(out["blas"].rung) == int(out["xla"].rung)
    # cond(K + δI) ~ 1e13 here, so the two u differ by far more than eps; each solves its
    # shifted system to a backward error of a few eps
    full = np.asarray(k) + np.tril(np.asarray(k), -1).T
    for sol in out.values():
        a = full + (1e-16 + float(sol.jitter)) * np.eye(40)
        u = np.asarray(sol.u)
        assert np.linalg.norm(a @ u - np.asarray(g)) <= 1e-13 * np.linalg.norm(a, 2) * \
            np.linalg.norm(u)


def test_auto_factors_large_matrices_with_the_blas_on_several_cores(monkeypatch):
    big, small = blas.AUTO_MIN_CHOLESKY_ORDER, blas.AUTO_MIN_CHOLESKY_ORDER - 1
    monkeypatch.setenv(blas.ENV, "auto")
    monkeypatch.setenv(blas.THREADS_ENV, "2")
    assert blas.cholesky_backend(n=big) == "blas"
    assert blas.cholesky_backend(n=small) == "xla"
    assert blas.cholesky_backend("blas", small) == "blas"  # by name: any order
    monkeypatch.setenv(blas.THREADS_ENV, "1")  # one core: nothing to gain
    assert blas.cholesky_backend(n=big) == "xla"
    monkeypatch.setenv(blas.ENV, "xla")
    assert blas.cholesky_backend(n=big) == "xla"
    monkeypatch.setenv(blas.ENV, "blas")
    assert blas.cholesky_backend(n=small) == "blas"
