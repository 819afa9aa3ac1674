"""The layers of docs/architecture.md, enforced: imports point down, never up and never by string;
stages never import each other; tests and benches use public names only."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Lowest first; a module may import its own layer and the ones before it.
LAYERS = [
    "faceswap.core",
    "faceswap_models",
    "faceswap.faces",
    "faceswap.data",
    "faceswap.artifacts",
    "faceswap.evaluation",
    "faceswap.training",
    "faceswap.serving",
    "faceswap.params",
    "stages",
    "flows",
    "faceswap.cli",
]
PACKAGES = ("faceswap", "faceswap_models", "stages", "flows")


def layer_of(module: str) -> int | None:
    """Index of the layer `module` belongs to (the longest matching prefix), None if outside them."""
    hits = [(len(p), i) for i, p in enumerate(LAYERS) if module == p or module.startswith(p + ".")]
    return max(hits)[1] if hits else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files(roots=PACKAGES) -> list[Path]:
    return sorted(p for r in roots for p in (REPO / r).rglob("*.py"))


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in `path`, including the names of `from X import Y`."""
    tree = ast.parse(path.read_text("utf-8"))
    here = module_name(path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                pkg = here.split(".")[: -node.level] if not path.name == "__init__.py" else \
                    here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            out += [(node.lineno, base)] + [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def test_the_layer_table_covers_every_module():
    missing = [module_name(p) for p in project_files() if layer_of(module_name(p)) is None
               and module_name(p) != "faceswap"]
    assert not missing, f"modules outside every layer: {missing}"


def test_imports_point_down():
    bad = []
    for path in project_files():
        me = layer_of(module_name(path))
        if me is None:
            continue
        for line, mod in imports(path):
            them = layer_of(mod)
            if them is not None and them > me:
                bad.append(f"{path.relative_to(REPO)}:{line} ({LAYERS[me]}) imports {mod} ({LAYERS[them]})")
    assert not bad, "imports that point up:\n" + "\n".join(sorted(set(bad)))


def test_stages_never_import_each_other():
    bad = [f"{p.relative_to(REPO)}:{line} imports {mod}" for p in project_files(("stages",))
           for line, mod in imports(p) if mod.startswith("stages.") and mod != module_name(p)
           and not mod.startswith(module_name(p) + ".")]
    # the training stages re-import their own module under its name when run as __main__ (Ray pickling)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("roots", [PACKAGES, ("bench",)])
def test_no_import_by_string(roots):
    """No importlib.import_module / __import__ and no "module:function" strings naming our code."""
    bad = []
    for path in project_files(roots):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if name in ("import_module", "__import__"):
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno} calls {name}")
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                head = node.value.split(":", 1)[0]
                if ":" in node.value and " " not in node.value and head.split(".")[0] in PACKAGES + ("bench",) \
                        and "." in head:
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno} names {node.value!r}")
    assert not bad, "\n".join(bad)


def test_tests_and_benches_use_public_names():
    """No `from module import _private` of another module in tests/ or bench/."""
    bad = []
    for path in sorted((REPO / "tests").rglob("*.py")) + sorted((REPO / "bench").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES + ("bench",):
                bad += [f"{path.relative_to(REPO)}:{node.lineno} imports {node.module}.{a.name}"
                        for a in node.names if a.name.startswith("_")]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The direction check can fail: a core module importing serving is flagged."""
    assert layer_of("faceswap.core.io") < layer_of("faceswap.serving.registry")
    assert layer_of("faceswap.cli") == len(LAYERS) - 1 and layer_of("faceswap.core") == 0
    assert layer_of("numpy") is None


def test_every_console_command_resolves_to_its_module():
    """`faceswap NAME` reaches NAME's own main (the table in faceswap/cli.py imports lazily)."""
    from faceswap import cli

    for name in cli.COMMANDS:
        fn = cli.command(name)
        module = ("faceswap.serving.swap_cli" if name in ("swap", "verify") else "faceswap.cli" if name == "train"
                  else f"stages.{name}")
        assert fn.__module__ == module and fn.__name__ in ("main", f"{name}_main"), (name, fn)


def test_every_training_stage_of_an_architecture_is_a_console_command():
    """`faceswap train NAME` (dvc.yaml's train@NAME) runs the architecture's stages through the same table."""
    from faceswap import cli
    from faceswap_models.architectures import ARCHITECTURES

    for arch in ARCHITECTURES.values():
        assert arch.train_stages and set(arch.train_stages) <= set(cli.COMMANDS), arch.name
        for stage in arch.train_stages:
            assert cli.command(stage).__module__ == f"stages.{stage}"


def test_the_params_tree_and_the_data_stages_do_not_import_torch():
    """Config modules stay light: the data stages (and each of their pool workers) load the params tree,
    and importing torch there cost ~600 MiB and 2 s per process."""
    import subprocess
    import sys

    code = ("import sys, faceswap.params, stages.ingest, stages.filter, stages.align, stages.segment, "
            "stages.threedmm, stages.split; print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
