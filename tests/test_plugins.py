"""Plugins: problems, networks and optimizers registered by name from outside pinn-ng.

The registries (pinn_ng.registry), their three instances, and the three places plugins load
from (PINN_NG_PLUGINS, a preset's ``plugins``, entry points of installed packages), each
through the command line and the pipeline as a user meets them.  In-process cases restore the
registries afterwards; the examples/ plugins also run for a few steps through ``pinn-ng run``.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import optax
import pytest

from pinn_ng import cli, models, optim, plugins, problems
from pinn_ng.pipeline import config as pcfg
from pinn_ng.pipeline import records, runner
from pinn_ng.registry import Registry

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
PINN_NG = Path(sys.executable).parent / "pinn-ng"
ENV = {**{k: v for k, v in os.environ.items() if k not in ("PINN_NG_PLUGINS",
                                                           "PINN_NG_TRACEBACK")},
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
BOTH = os.pathsep.join([str(EXAMPLES / "my_problem.py"), str(EXAMPLES / "my_optimizer.py")])
# One xdist worker: the snakemake dry run shares the pipeline tests' group.
pytestmark = pytest.mark.xdist_group("pipeline")


@pytest.fixture(autouse=True)
def clean_registries(monkeypatch):
    """Whatever a case registers or loads is gone afterwards (registries, plugin modules)."""
    monkeypatch.delenv(plugins.ENV_VAR, raising=False)
    monkeypatch.delenv("PINN_NG_TRACEBACK", raising=False)
    for reg in (problems.REGISTRY, models.REGISTRY, optim.REGISTRY):
        monkeypatch.setattr(reg, "_entries", dict(reg._entries))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("_pinn_ng_plugin_") or name.startswith("userplug"):
            del sys.modules[name]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _tiny_problem(name: str) -> problems.Problem:
    base = problems.get("poisson2d")
    return problems.Problem(**{**base.__dict__, "name": name, "description": "a copy"})


# ------------------------------------------------------------------------------ the registry


def test_registry_register_names_meta_and_errors():
    reg = Registry("widget")

    @reg.register("w1", colour="red")
    def w1():
        return 1

    assert reg.names() == ["w1"] and reg.get("w1") is w1 and reg.meta("w1") == {"colour": "red"}
    assert "w1" in reg and ["w1"] not in reg
    assert reg.origin("w1") == __name__
    with pytest.raises(ValueError, match=rf"widget 'w1' is already registered \(by {__name__}\)"):
        reg.register("w1")(lambda: 2)
    for bad in ("1abc", "a-b", "", "a b", None, "_x"):
        with pytest.raises(ValueError, match="not valid: a letter, then letters"):
            reg.register(bad)
    with pytest.raises(KeyError) as err:
        reg.get("w2")
    assert err.value.args[0] == "unknown widget 'w2'; valid widgets: ['w1']"
    with pytest.raises(KeyError, match="unknown widget"):
        reg.get(["w1"])  # unhashable, e.g. a list from a preset
    with pytest.raises(TypeError, match="decorates a factory"):
        reg.register("w3")(42)


def test_unknown_names_keep_their_wording():
    with pytest.raises(KeyError) as err:
        problems.get("poisson7d")
    assert err.value.args[0] == f"unknown problem 'poisson7d'; valid problems: {problems.names()}"
    with pytest.raises(KeyError) as err:
        optim.make("adamw", None)
    assert err.value.args[0] == f"unknown optimizer 'adamw'; valid optimizers: {optim.names()}"
    with pytest.raises(KeyError) as err:
        models.make("resnet", [2, 1])
    assert err.value.args[0] == f"unknown network 'resnet'; valid networks: {models.names()}"
    assert not hasattr(optim, "_PLANNED") and not hasattr(optim, "_REGISTRY")


def test_builtins_are_registered_with_their_metadata():
    assert problems.names()[:3] == ["poisson2d", "poisson5d", "poisson10d"]
    assert optim.names() == ["sgd", "adam", "lbfgs", "hessian_free", "engd", "engd_woodbury",
                             "spring", "kfac", "kfac_star"]
    assert [n for n in optim.names() if optim.uses_grads(n)] == ["sgd", "adam", "lbfgs"]
    assert models.names()[0] == "mlp" and models.REGISTRY.get("mlp") is models.mlp
    assert optim.hyperparameters("adam") == {"learning_rate": 2.808e-4}


def test_problem_register_and_bad_factories(capsys):
    @problems.register("poisson2d_copy")
    def factory():
        return _tiny_problem("poisson2d_copy")

    assert problems.names()[-1] == "poisson2d_copy"
    assert problems.get("poisson2d_copy").input_dim == 2
    with pytest.raises(ValueError, match="problem 'poisson2d' is already registered "
                       r"\(by pinn_ng.problems\); choose another name"):
        problems.register("poisson2d")(factory)
    problems.register("wrong_type")(lambda: 42)
    with pytest.raises(TypeError, match=f"problem 'wrong_type': the factory registered by "
                       f"{__name__} returned int, not a pinn_ng.problems.Problem"):
        problems.get("wrong_type")
    problems.register("wrong_name")(lambda: _tiny_problem("other"))
    with pytest.raises(ValueError, match="returned a Problem named 'other'; give it "
                       "name='wrong_name'"):
        problems.get("wrong_name")
    # the runner, the planner and pinn-ng problems say so in one line
    with pytest.raises(runner.SpecError, match="returned int"):
        runner.complete_spec({"problem": "wrong_type", "optimizer": "adam", "max_steps": 1})
    cfg = pcfg.merge(pcfg.load_yaml(pcfg.preset_path("default")),
                     {"experiments": {"convergence": {"problems": ["wrong_name"]}}})
    with pytest.raises(pcfg.ConfigError, match="returned a Problem named 'other'"):
        pcfg.plan(cfg)
    assert cli.main(["problems"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"pinn-ng problems: error: problem 'wrong_type': the factory registered by {__name__} "
        "returned int, not a pinn_ng.problems.Problem"]


def test_optimizer_register_signature_declared_and_plain_optax():
    @optim.register("sgd_plain", uses_grads=True)
    def sgd_plain(residual_fn, learning_rate=0.1):
        return optax.sgd(learning_rate)  # plain optax: make adds batch= support

    assert optim.uses_grads("sgd_plain")
    assert optim.hyperparameters("sgd_plain") == {"learning_rate": 0.1}
    opt = optim.make("sgd_plain", None, learning_rate=0.5)
    assert isinstance(opt, optax.GradientTransformationExtraArgs)

    seen = {}

    @optim.register("kw_only", hyperparameters={"damping": inspect.Parameter.empty,
                                                "learning_rate": 0.3})
    def kw_only(residual_fn, **hparams):
        seen.update(hparams)
        return optax.with_extra_args_support(optax.sgd(hparams["learning_rate"]))

    assert not optim.uses_grads("kw_only")
    assert optim.hyperparameters("kw_only") == {"damping": inspect.Parameter.empty,
                                                "learning_rate": 0.3}
    optim.make("kw_only", None, damping=1e-3)
    assert seen == {"damping": 1e-3, "learning_rate": 0.3}  # declared defaults passed on
    with pytest.raises(ValueError, match="missing hyper-parameter 'damping'"):
        optim.make("kw_only", None)
    with pytest.raises(ValueError, match="unknown hyper-parameter 'dampng'; valid: damping, "
                       "learning_rate"):
        optim.make("kw_only", None, damping=1.0, dampng=1.0)
    with pytest.raises(TypeError, match="hyperparameters must be a mapping"):
        optim.register("bad_hp", hyperparameters=["damping"])

    optim.register("not_optax")(lambda residual_fn: "adam")
    with pytest.raises(TypeError, match=f"optimizer 'not_optax': the factory registered by "
                       f"{__name__} returned str, not an optax.GradientTransformation"):
        optim.make("not_optax", None)
    with pytest.raises(ValueError, match="optimizer 'adam' is already registered "
                       r"\(by pinn_ng.optim.baselines\)"):
        optim.register("adam")(sgd_plain)


def test_network_register_and_make():
    calls = []

    @models.register("mlp_traced")
    def mlp_traced(widths, dtype):
        calls.append((tuple(widths), dtype))
        return models.mlp(widths, dtype)

    net = models.make("mlp_traced", [2, 3, 1], "float32")
    assert calls == [((2, 3, 1), "float32")] and callable(net.init) and callable(net.apply)
    models.register("no_pair")(lambda widths, dtype: 3)
    with pytest.raises(TypeError, match="network 'no_pair': .* returned int, not a pair "
                       r"\(init, apply\)"):
        models.make("no_pair", [2, 1])
    # the runner accepts a registered network by name and keeps mlp out of the record
    spec = {"problem": "poisson2d", "optimizer": "adam", "max_steps": 1}
    assert "network" not in runner.complete_spec({**spec, "network": "mlp"})
    assert runner.complete_spec({**spec, "network": "mlp_traced"})["network"] == "mlp_traced"
    with pytest.raises(runner.SpecError) as err:
        runner.complete_spec({**spec, "network": "resnet"})
    assert str(err.value) == f"unknown network 'resnet'; valid networks: {models.names()}"
    assert models.names()[-2:] == ["mlp_traced", "no_pair"]


def test_a_preset_names_a_network_per_problem(tmp_path):
    @models.register("mlp_plain")
    def mlp_plain(widths, dtype):  # an apply without the mlp mark: the folx path
        init, apply = models.mlp(widths, dtype)
        return init, lambda params, x: apply(params, x)

    cfg = pcfg.merge(pcfg.load_yaml(pcfg.preset_path("default")),
                     {"problems": {"poisson2d": {"network": "mlp_plain"}}})
    plan = pcfg.plan(cfg)
    specs = [plan.spec(r) for r in list(plan.runs) + list(plan.tuned)]
    assert {s.get("network") for s in specs if s["problem"] == "poisson2d"} == {"mlp_plain"}
    assert all("network" not in s for s in specs if s["problem"] != "poisson2d")
    plain = pcfg.plan(pcfg.load_yaml(pcfg.preset_path("default")))
    assert all("network" not in s for s in plain.runs.values())  # run ids as before
    with pytest.raises(pcfg.ConfigError, match=r"problems.poisson2d.network.*'resnet'"):
        pcfg.plan(pcfg.merge(cfg, {"problems": {"poisson2d": {"network": "resnet"}}}))
    spec = {"problem": "poisson2d", "optimizer": "engd_woodbury", "network": "mlp_plain",
            "hparams": {"damping": 1e-8}, "widths": [2, 6, 1], "n_interior": 20,
            "n_boundary": 8, "max_steps": 3, "eval_every": 1}
    meta = runner.run(spec, tmp_path / "run", progress=False)
    assert meta["spec"]["network"] == "mlp_plain" and meta["steps"] == 3
    # the same net through the folx path (no mlp mark) trains as mlp's structured path does
    ref = runner.run({**spec, "network": "mlp"}, tmp_path / "ref", progress=False)
    assert "network" not in ref["spec"]
    assert meta["final"]["l2"] == pytest.approx(ref["final"]["l2"], rel=1e-8)


# ------------------------------------------------------------------------------ loading


def test_load_files_modules_idempotently_and_env(tmp_path, monkeypatch):
    file_plugin = _write(tmp_path / "a dir" / "plug.py",
                         "from pinn_ng import problems\n"
                         "problems.register('from_file')(lambda: None)\n")
    _write(tmp_path / "mods" / "userplug_opt.py",
           "import optax\nfrom pinn_ng import optim\n"
           "@optim.register('from_module', uses_grads=True)\n"
           "def f(residual_fn, learning_rate=0.1):\n"
           "    return optax.sgd(learning_rate)\n")
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    monkeypatch.setenv(plugins.ENV_VAR, os.pathsep.join([str(file_plugin), "userplug_opt", ""]))
    assert plugins.load() == [str(file_plugin), "userplug_opt"]
    assert "from_file" in problems.names() and "from_module" in optim.names()
    assert problems.REGISTRY.origin("from_file") == str(file_plugin.resolve())
    assert plugins.load() == [str(file_plugin), "userplug_opt"]  # again: no duplicate error
    monkeypatch.chdir(tmp_path / "a dir")
    plugins.load(["plug.py"])  # the same file by a relative path: still loaded once
    assert problems.names().count("from_file") == 1


@pytest.mark.parametrize("text,expected", [
    (None, "plugin {path}: no such file"),
    ("x = (\n", "plugin {path}: SyntaxError: '(' was never closed (broken.py, line 1)"),
    ("import no_such_module_here\n",
     "plugin {path}: ModuleNotFoundError: No module named 'no_such_module_here'"),
    ("from pinn_ng import problems\nproblems.register('poisson2d')(lambda: None)\n",
     "plugin {path}: ValueError: problem 'poisson2d' is already registered (by "
     "pinn_ng.problems); choose another name"),
    ("from pinn_ng import optim\noptim.register('bad-name')\n",
     "plugin {path}: ValueError: optimizer name 'bad-name' is not valid"),
])
def test_a_broken_plugin_is_one_line_naming_it(tmp_path, capsys, monkeypatch, text, expected):
    path = tmp_path / "broken.py"
    if text is not None:
        _write(path, text)
    with pytest.raises(plugins.PluginError) as err:
        plugins.load([str(path)])
    assert str(err.value).startswith(expected.format(path=path)), str(err.value)
    assert "\n" not in str(err.value)
    # through the command line: one line on stderr, exit status 2
    monkeypatch.setenv(plugins.ENV_VAR, str(path))
    assert cli.main(["problems"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0] == f"pinn-ng problems: error: {err.value}"
    assert not [n for n in sys.modules if n.startswith("_pinn_ng_plugin_broken_")]


def test_a_missing_module_is_one_line():
    with pytest.raises(plugins.PluginError, match="^plugin no_such_plugin_mod: "
                       "ModuleNotFoundError: No module named 'no_such_plugin_mod'$"):
        plugins.load(["no_such_plugin_mod"])


def _dist(tmp_path, monkeypatch, entry_points: str, module: str) -> None:
    """An installed distribution on sys.path: a module and a dist-info with entry points."""
    site = tmp_path / "site"
    _write(site / "userplug_ep.py", module)
    info = site / "userplug_ep-0.1.dist-info"
    _write(info / "METADATA", "Metadata-Version: 2.1\nName: userplug-ep\nVersion: 0.1\n")
    _write(info / "entry_points.txt", entry_points)
    monkeypatch.syspath_prepend(str(site))


def test_entry_points_register_modules_and_factories(tmp_path, monkeypatch):
    _dist(tmp_path, monkeypatch,
          "[pinn_ng.problems]\nep_module = userplug_ep\nep_factory = userplug_ep:factory\n"
          "[pinn_ng.optimizers]\nep_opt = userplug_ep:opt\nep_decorated = userplug_ep:deco\n"
          "[pinn_ng.networks]\nep_net = userplug_ep:net\n",
          "import optax\n"
          "from pinn_ng import models, optim, problems\n"
          "problems.register('ep_by_import')(lambda: None)\n"
          "def factory():\n    return None\n"
          "def opt(residual_fn, learning_rate=0.1):\n"
          "    return optax.sgd(learning_rate)\n"
          "@optim.register('ep_decorated', uses_grads=True)\n"
          "def deco(residual_fn):\n    return optax.sgd(0.1)\n"
          "def net(widths, dtype):\n    return models.mlp(widths, dtype)\n")
    plugins.load()
    # a module: importing it registered its names; a factory: registered under the entry
    # point's name with register's defaults; a decorated one: not twice
    assert "ep_by_import" in problems.names() and "ep_factory" in problems.names()
    assert "ep_module" not in problems.names()
    assert "ep_opt" in optim.names() and not optim.uses_grads("ep_opt")
    assert optim.names().count("ep_decorated") == 1 and optim.uses_grads("ep_decorated")
    assert "ep_net" in models.names()
    plugins.load()  # idempotent


def test_a_broken_entry_point_is_one_line(tmp_path, monkeypatch):
    _dist(tmp_path, monkeypatch, "[pinn_ng.optimizers]\nep_bad = userplug_ep:missing\n",
          "X = 1\n")
    with pytest.raises(plugins.PluginError, match=r"^plugin ep_bad \(entry point "
                       r"userplug_ep:missing in group pinn_ng.optimizers\): AttributeError: "):
        plugins.load()
    monkeypatch.syspath_prepend(str(tmp_path))  # an entry point that names no factory
    _write(tmp_path / "site" / "userplug_ep-0.1.dist-info" / "entry_points.txt",
           "[pinn_ng.problems]\nep_int = userplug_ep:X\n")
    with pytest.raises(plugins.PluginError, match="names a int, not a module or a factory"):
        plugins.load()


def test_env_with_lists_env_then_preset_absolute_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(plugins.ENV_VAR, os.pathsep.join(["a.py", "some_module"]))
    env = plugins.env_with([str(tmp_path / "a.py"), "other_module", "b/c.py"])
    assert env[plugins.ENV_VAR].split(os.pathsep) == [
        str(tmp_path / "a.py"), "some_module", "other_module", str(tmp_path / "b" / "c.py")]
    monkeypatch.delenv(plugins.ENV_VAR)
    assert plugins.env_with([]) == {}


# ------------------------------------------------------------------------------ the examples


def test_examples_run_through_pinn_ng_run(tmp_path):
    """The examples load from PINN_NG_PLUGINS, are listed, and train for a few steps."""
    env = {**ENV, plugins.ENV_VAR: BOTH}
    listed = subprocess.run([str(PINN_NG), "problems"], capture_output=True, text=True,
                            env=env, timeout=300, check=True).stdout
    assert "poisson3d_exp" in listed and "Poisson 3d, u* = exp(-sum x_i)" in listed
    out = tmp_path / "run"
    proc = subprocess.run(
        [str(PINN_NG), "run", "--problem", "poisson3d_exp", "--optimizer", "engd_w_decay",
         "--max-steps", "2", "--eval-every", "1", "--n-interior", "50", "--n-boundary", "20",
         "--widths", "3,8,1", "--no-progress", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / records.META).read_text())
    assert meta["spec"]["problem"] == "poisson3d_exp"
    assert meta["spec"]["optimizer"] == "engd_w_decay" and meta["steps"] == 2
    curve = (out / records.CURVE).read_text().splitlines()
    l2 = [float(line.split(",")[3]) for line in curve[1:]]
    assert len(l2) == 3 and l2[-1] < l2[0]


def test_broken_plugin_through_the_entry_point_is_one_line(tmp_path):
    broken = _write(tmp_path / "broken.py", "def f(:\n")
    proc = subprocess.run([str(PINN_NG), "optimizers"], capture_output=True, text=True,
                          env={**ENV, plugins.ENV_VAR: str(broken)}, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"pinn-ng optimizers: error: plugin {broken}: SyntaxError: invalid syntax "
        "(broken.py, line 1)"]


# ------------------------------------------------------------------------------ presets


def _plugin_preset(tmp_path, plugin_entries) -> Path:
    """A preset beside copies of the examples, naming them relative to itself."""
    for name in ("my_problem.py", "my_optimizer.py"):
        _write(tmp_path / "plugins" / name, (EXAMPLES / name).read_text())
    default = pcfg.load_yaml(pcfg.preset_path("default"))  # switch its grids off
    off_exp = "".join(f"  {e}: null\n" for e in default["experiments"] if e != "convergence")
    off_studies = "".join(f"    {s}: null\n" for s in
                          ((default.get("tuning") or {}).get("studies") or {}))
    text = (
        f"plugins: {plugin_entries}\n"
        "replicates: 1\n"
        "problems:\n  poisson3d_exp: {widths: [3, 8, 1], batch: [50, 20]}\n"
        "optimizers:\n"
        "  decay: {optimizer: engd_w_decay, hparams: {damping: 1e-4}, display: ENGD-W decay,\n"
        "          per_problem: {poisson3d_exp: {decay_steps: 5}}}\n"
        "  engd_w: {optimizer: engd_woodbury, hparams: {damping: 1e-8}}\n"
        "experiments:\n"
        "  convergence: {problems: [poisson3d_exp], optimizers: [decay, engd_w],\n"
        "                budget: {steps: 3, seconds: null}, tuned: [], replicates: 1}\n"
        + off_exp +
        "nystrom_table: null\n"
        "tuning:\n"
        "  spaces:\n    decay: {space: {damping: {loguniform: [1e-6, 1e-3]}}}\n"
        "  studies:\n    mine: {problems: [poisson3d_exp], optimizers: [decay], trials: [2],\n"
        "                budget: {steps: 2}}\n" + off_studies)
    return _write(tmp_path / "presets" / "mine.yaml", text)


def test_preset_plugins_relative_to_the_preset_plan(tmp_path, monkeypatch):
    path = _plugin_preset(tmp_path, "[../plugins/my_problem.py, ../plugins/my_optimizer.py]")
    monkeypatch.chdir(REPO)  # not the preset's directory
    cfg = pcfg.merge(pcfg.load_preset(pcfg.preset_path("default")), pcfg.load_preset(path))
    assert cfg["plugins"] == [str(tmp_path / "plugins" / "my_problem.py"),
                              str(tmp_path / "plugins" / "my_optimizer.py")]
    plan = pcfg.plan(cfg)
    specs = [plan.spec(r) for r in plan.experiments["convergence"]]
    assert {s["optimizer"] for s in specs} == {"engd_w_decay", "engd_woodbury"}
    assert [s for s in specs if s["label"] == "decay"][0]["hparams"]["decay_steps"] == 5
    assert "convergence_poisson3d_exp" in plan.figures and "mine" in plan.studies
    assert plan.plugins_env() == {plugins.ENV_VAR: os.pathsep.join(cfg["plugins"])}
    schema = pcfg.load_schema()
    assert "poisson3d_exp" in schema["$defs"]["problem_name"]["enum"]
    assert "engd_w_decay" in schema["$defs"]["optimizer_name"]["enum"]
    # the Snakefile's way: Snakemake merged the files; the preset that gave the list wins
    raw = pcfg.merge(pcfg.load_yaml(pcfg.preset_path("default")), pcfg.load_yaml(path))
    assert pcfg.preset_plugins(raw, [pcfg.preset_path("default"), path]) == cfg["plugins"]
    monkeypatch.chdir(tmp_path)  # --config plugins=[…]: relative to the working directory
    assert pcfg.preset_plugins({"plugins": ["x.py", "mod"]}, [path]) == [
        str(tmp_path / "x.py"), "mod"]


def test_preset_with_a_broken_or_malformed_plugin(tmp_path):
    path = _plugin_preset(tmp_path, "[../plugins/missing.py]")
    with pytest.raises(pcfg.ConfigError, match=r"^plugin .*/plugins/missing.py: no such file$"):
        pcfg.plan(pcfg.merge(pcfg.load_preset(pcfg.preset_path("default")),
                             pcfg.load_preset(path)))
    with pytest.raises(pcfg.ConfigError, match="config key plugins: 'x.py' is not a list"):
        pcfg.plan({"plugins": "x.py"})


def test_pinn_ng_plan_and_snakemake_dry_run_with_preset_plugins(tmp_path):
    path = _plugin_preset(tmp_path, "[../plugins/my_problem.py, ../plugins/my_optimizer.py]")
    proc = subprocess.run([str(PINN_NG), "plan", str(path)], capture_output=True, text=True,
                          env=ENV, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "poisson3d_exp_decay" in proc.stdout and "poisson3d_exp_engd_w" in proc.stdout
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work),
           "--cores", "2", "-n", "--configfile", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "convergence_poisson3d_exp" in out and "tune_trial" in out
    # a broken plugin stops Snakemake before any job, in one line
    bad = _plugin_preset(tmp_path / "bad", "[../plugins/nope.py]")
    proc = subprocess.run(cmd[:-1] + [str(bad)], capture_output=True, text=True, env=ENV,
                          timeout=600)
    assert proc.returncode != 0
    assert f"pinn-ng preset: error: plugin {tmp_path / 'bad' / 'plugins' / 'nope.py'}: " \
        "no such file" in proc.stderr
    assert not (work / "results").exists()


@pytest.mark.slow
def test_snakemake_runs_a_preset_with_plugins(tmp_path):
    """Every job (runs, trials, gather, figures) loads the preset's plugins (about a minute)."""
    path = _plugin_preset(tmp_path, "[../plugins/my_problem.py, ../plugins/my_optimizer.py]")
    work = tmp_path / "work"
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                           "-d", str(work), "--cores", "2", "--configfile", str(path)],
                          capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (work / "results" / "summary.csv").read_text()
    assert "engd_w_decay" in summary and "poisson3d_exp" in summary
    for name in ("convergence_poisson3d_exp", "sensitivity_mine", "best_so_far_mine"):
        assert (work / "figures" / f"{name}.png").is_file(), name
