"""Every shell command README.md and docs/*.md show must run as written (a fresh clone, `make demo`,
then `. .venv/bin/activate`). Commands are extracted from the fenced shell blocks and from inline
code in the prose, and each one is checked as far as is cheap:

* `dvc ...`: parsed by DVC's own argument parser (a flag DVC does not have for that subcommand, such
  as `dvc repro -S`, fails); `-S key=value` keys must exist in params.yaml, stage targets in
  dvc.yaml; `dvc dag` is run.
* `python -m M ...` and `faceswap ...`: the module must exist and its argparse must accept the exact
  arguments shown (parsed in-process, stopped right after parsing, nothing runs); `--help` forms
  are run. Commands with placeholders (`[--size S ...]`) only need their flags in `--help`.
* `faceswap verify out.jpg` is run on a watermarked image named out.jpg.
* `mlflow ...`, `ray ...` (click): parsed by the command's own click parser; `prefect ...`: its
  `--help` must succeed and list the flags shown.
* `make X`: X must be a Makefile target.

What is parsed but not run (training, servers, whole pipelines, anything that changes the checkout)
must be listed in NOT_RUN with the reason; a new command in the docs that is neither cheap nor
listed fails the test.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import runpy
import shlex
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOOLS = {"make", "dvc", "python", "faceswap", "mlflow", "prefect", "ray", "."}
SHELL_LANGS = {"bash", "sh", "shell", ""}

# Shown in the docs, checked (parsed) here, but not run: why not.
NOT_RUN = {
    "make demo": "creates the venv and runs the whole pipeline (minutes); CI runs it",
    "make test": "the test suite, which this test is part of",
    "make bench": "benchmarks (minutes)",
    "make venv": "creates the venv (`make demo` and `make test` do it first)",
    "make flow": "the data stages as a Prefect flow (tests/test_flow_prepare.py runs that flow)",
    "make compare": "trains every architecture (about 25 min); tests/test_compare.py checks its table",
    "dvc repro": "runs the pipeline (minutes; `make demo` does)",
    "dvc exp run": "runs the pipeline with changed params (minutes) and writes them to params.yaml",
    "dvc metrics": "reads the metrics `make demo` writes",
    "dvc plots": "renders the plots `make demo` writes into dvc_plots/",
    "dvc commit": "records outputs in dvc.lock (changes the checkout)",
    "dvc remote add": "changes the checkout's DVC config (docs/cluster.md)",
    "dvc push": "needs a DVC remote (docs/cluster.md)",
    "dvc pull": "needs a DVC remote (docs/cluster.md)",
    "python -m stages.": "a stage needs its inputs from `make demo` (tests/test_*stages*.py run the stages)",
    "python -m flows.retrain": "serves / runs the retraining flow (tests/test_retrain*.py run it)",
    "python -m flows.pipeline": "the whole `dvc repro` as a flow (minutes)",
    "python -m bench.": "benchmarks (minutes)",
    "python -m bench.models": "benchmarks (minutes)",
    "python -m faceswap.params": "rewrites params.yaml",
    "python -m faceswap.training.tracking": "runs `dvc repro` under a parent MLflow run (minutes)",
    "python -m pytest": "runs tests",
    "faceswap swap": "needs a trained model (`make demo`); tests/test_inference.py runs the CLI",
    "mlflow ui": "starts a server",
    "mlflow models serve": "starts a server and needs the registered model from `make demo`",
    "prefect server start": "starts a server",
    "prefect deployment run": "needs a running Prefect server with the deployment served",
    "prefect config set": "changes the user's Prefect profile",
    "ray start": "starts a Ray head node",
}


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    text: str
    argv: tuple[str, ...]  # without leading NAME=value assignments; .venv/bin/ prefix removed
    inline: bool

    @property
    def tool(self) -> str:
        return self.argv[0]


def _argv(text: str) -> list[str] | None:
    try:
        words = shlex.split(text, comments=True)
    except ValueError:
        return None
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words.pop(0)  # env assignment for this command
    if words and words[0].startswith(".venv/bin/"):
        words[0] = words[0][len(".venv/bin/"):]
    return words


def extract_commands() -> list[Command]:
    out: list[Command] = []
    for doc in DOCS:
        rel = doc.relative_to(ROOT).as_posix()
        lines = doc.read_text("utf-8").splitlines()
        fence: str | None = None
        i = 0
        while i < len(lines):
            line, start = lines[i], i + 1
            m = re.match(r"^\s*```(\w*)\s*$", line)
            if m:
                fence = None if fence is not None else m.group(1)
                i += 1
                continue
            if fence is not None:
                while line.rstrip().endswith("\\") and i + 1 < len(lines):  # continuation
                    i += 1
                    line = line.rstrip()[:-1] + " " + lines[i].strip()
                i += 1
                if fence not in SHELL_LANGS:
                    continue
                argv = _argv(line)
                if not argv:
                    continue
                if argv[0] in TOOLS:
                    out.append(Command(f"{rel}:{start}", line.split(" #")[0].strip(), tuple(argv), False))
                elif fence:  # a shell-tagged block holds only commands this test knows how to check
                    raise AssertionError(f"{rel}:{start}: unknown command in a {fence} block: {line!r}")
                continue
            for code in re.findall(r"`([^`\n]+)`", line):
                argv = _argv(code)
                if argv and argv[0] in TOOLS - {"."} and (argv[0] != "python" or argv[1:2] == ["-m"]) \
                        and len(argv) > 1:
                    out.append(Command(f"{rel}:{start}", code, tuple(argv), True))
            i += 1
    return out


COMMANDS = extract_commands()
_seen: dict[tuple[str, ...], Command] = {}
for _c in COMMANDS:
    _seen.setdefault(_c.argv, _c)
UNIQUE = list(_seen.values())


def test_the_docs_show_the_commands_this_test_expects():
    texts = [c.text for c in COMMANDS]
    assert len(UNIQUE) >= 30, texts
    assert any(c.argv[:3] == ("dvc", "exp", "run") for c in UNIQUE)
    assert not any(c.argv[:2] == ("dvc", "repro") and "-S" in c.argv for c in UNIQUE)
    # the venv must be activated before dvc / mlflow / faceswap commands (stage commands call `python`)
    readme_blocks = [c for c in COMMANDS if c.where.startswith("README.md") and not c.inline]
    assert readme_blocks[2].argv == (".", ".venv/bin/activate"), readme_blocks[:3]


# --------------------------------------------------------------------------- checkers
class _Parsed(Exception):
    pass


@contextlib.contextmanager
def _stop_after_parse():
    """argparse parses as usual, then raises _Parsed instead of returning: nothing after it runs."""
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    argparse.ArgumentParser.parse_args = parse_args
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original


def _run_argparse(target, argv: list[str]) -> tuple[str, str]:
    """Run `target()` (reading sys.argv) until its argparse has parsed; ("parsed" | "help", output)."""
    out, err = io.StringIO(), io.StringIO()
    old = sys.argv
    sys.argv = ["prog", *argv]
    try:
        with _stop_after_parse(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            target()
    except _Parsed:
        return "parsed", out.getvalue()
    except SystemExit as e:
        if e.code == 0 and "--help" in argv:
            return "help", out.getvalue()
        raise AssertionError(f"argument error (exit {e.code}): {err.getvalue()[-1500:]}") from None
    finally:
        sys.argv = old
    raise AssertionError(f"{argv}: returned without parsing any arguments (would it run?)")


def _placeholders(c: Command) -> bool:
    return any(ch in c.text for ch in "[<") or "..." in c.text


def _flags(argv) -> list[str]:
    return [a.split("=", 1)[0] for a in argv if a.startswith("-") and a not in ("-", "--")]


def _check_help_lists_flags(help_text: str, argv) -> None:
    for f in _flags(argv):
        assert re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", help_text), f"{f} is not in --help:\n{help_text}"


def _python_module(c: Command) -> str:
    import importlib.util

    module = c.argv[2]
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None
    assert spec is not None, f"`{c.text}`: no module {module}"
    args = list(c.argv[3:])
    if module == "pytest":
        return "not run"
    main = lambda: runpy.run_module(module, run_name="__main__", alter_sys=True)  # noqa: E731
    if "--help" in args or _placeholders(c):
        kind, text = _run_argparse(main, ["--help"])
        assert kind == "help"
        _check_help_lists_flags(text, [a.strip("[]") for a in args])
        if "--help" in args:
            return "ran"
    if not _placeholders(c):
        assert _run_argparse(main, args)[0] == "parsed"
    return "parsed"


def _faceswap(c: Command, tmp_path: Path, monkeypatch) -> str:
    from faceswap import cli

    args = list(c.argv[1:])
    if args[:1] == ["verify"] and len(args) > 1:  # run it, on a marked image under the name the docs use
        import cv2
        from skimage import data

        from faceswap.serving import watermark

        monkeypatch.chdir(tmp_path)
        Path(args[1]).write_bytes(watermark.encode_with_metadata(
            watermark.embed(data.astronaut()), Path(args[1]).suffix.lstrip("."), "faceswap test"))
        assert cv2.imread(args[1]) is not None
        assert cli.main(args) == 0
        return "ran"
    if c.inline and not _flags(args):
        args = [args[0], "--help"]
    kind, _ = _run_argparse(lambda: sys.exit(cli.main(sys.argv[1:])), args)
    return "ran" if kind == "help" else "parsed"


def _dvc(c: Command, monkeypatch) -> str:
    from dvc.cli import DvcParserError, parse_args

    monkeypatch.setattr(sys, "argv", list(c.argv))  # part of DVC's parser reads sys.argv (pytest's -q -v)

    args = list(c.argv[1:])
    if c.inline and not _flags(args) and args[0] in ("plots", "metrics") and len(args) == 1:
        args.append("--help")  # a mention of the command group
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            ns = parse_args(args)
    except SystemExit as e:
        assert e.code == 0 and "--help" in args, f"dvc {' '.join(args)}: {err.getvalue()[-1500:]}"
        return "ran"
    except DvcParserError:
        raise AssertionError(f"`{c.text}`: DVC does not accept these arguments:\n{err.getvalue()[-1500:]}") from None
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for kv in getattr(ns, "set_param", None) or []:
        node = params
        for part in kv.split("=", 1)[0].split("."):
            assert isinstance(node, dict) and part in node, f"`{c.text}`: {kv} is not a key of params.yaml"
            node = node[part]
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for t in getattr(ns, "targets", None) or []:
        group, _, item = t.partition("@")  # a foreach stage's item: train@flowfacepp
        assert group in stages and (not item or ("foreach" in stages[group] and item in params["architectures"])), \
            f"`{c.text}`: no stage {t!r} in dvc.yaml"
    if args == ["dag"]:
        proc = subprocess.run([sys.executable, "-m", "dvc", "dag"], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0 and "train@flowfacepp" in proc.stdout and "register" in proc.stdout, proc.stderr
        return "ran"
    return "parsed"


def _click(c: Command) -> str:
    import click

    if c.tool == "mlflow":
        from mlflow.cli import cli as group
    else:
        from ray.scripts.scripts import cli as group
    words, path, cmd = list(c.argv[1:]), [c.tool], group
    ctx = click.Context(group, info_name=c.tool)
    while words and isinstance(cmd, click.Group):
        sub = cmd.get_command(ctx, words[0])
        assert sub is not None, f"`{c.text}`: no subcommand {words[0]!r}"
        path.append(words.pop(0))
        cmd = sub
    try:
        cmd.make_context(" ".join(path), words)
    except click.ClickException as e:
        raise AssertionError(f"`{c.text}`: {e.format_message()}") from None
    return "parsed"


def _prefect(c: Command) -> str:
    words = list(c.argv[1:3])  # every prefect command shown is `prefect <group> <command> ...`
    exe = Path(sys.executable).parent / "prefect"
    proc = subprocess.run([str(exe), *words, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"`{c.text}`: {proc.stderr[-1500:]}"
    _check_help_lists_flags(proc.stdout, c.argv[3:])
    if words == ["deployment", "run"]:  # the deployment name is the one flows/retrain.py serves
        src = (ROOT / "flows" / "retrain.py").read_text()
        flow_name, _, deployment = c.argv[3].partition("/")
        assert f'@flow(name="{flow_name}"' in src and f'serve(name="{deployment}"' in src, c.text
    return "ran"


def _make(c: Command) -> str:
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    assert c.argv[1] in targets, f"`{c.text}`: no Makefile target {c.argv[1]!r}"
    return "parsed"


def _activate(c: Command) -> str:
    assert c.argv[1] == ".venv/bin/activate"
    assert "VENV ?= .venv" in (ROOT / "Makefile").read_text()
    assert (Path(sys.prefix) / "bin" / "activate").is_file(), "the venv has no bin/activate"
    return "ran"


@pytest.mark.parametrize("c", UNIQUE, ids=[f"{c.where} {c.text[:60]}" for c in UNIQUE])
def test_doc_command_runs_as_written(c: Command, tmp_path, monkeypatch):
    if c.tool == "python":
        assert c.argv[1] == "-m", f"`{c.text}`: use `python -m module`"
        outcome = _python_module(c)
    elif c.tool == "faceswap":
        exe = Path(sys.executable).parent / "faceswap"
        assert exe.is_file(), f"{exe}: the console script is not installed"
        outcome = _faceswap(c, tmp_path, monkeypatch)
    elif c.tool == "dvc":
        outcome = _dvc(c, monkeypatch)
    elif c.tool in ("mlflow", "ray"):
        outcome = _click(c)
    elif c.tool == "prefect":
        outcome = _prefect(c)
    elif c.tool == "make":
        outcome = _make(c)
    else:
        outcome = _activate(c)
    if outcome != "ran":
        prefix = max((p for p in NOT_RUN if " ".join(c.argv).startswith(p)), key=len, default=None)
        assert prefix, f"`{c.text}` ({c.where}) is not run here: run it or list it in NOT_RUN with the reason"


def test_python_blocks_import_what_they_use():
    """The import lines of the docs' python examples resolve."""
    for doc in DOCS:
        for block in re.findall(r"```python\n(.*?)```", doc.read_text("utf-8"), re.S):
            for line in block.splitlines():
                if re.match(r"(import|from)\s+\S+", line):
                    exec(line.split("#")[0], {})  # noqa: S102 - the docs' own import lines


@pytest.mark.parametrize("text", ["dvc repro -S ingest.root=/x", "dvc exp run -S ingest.nope=1", "dvc repro no_such_stage",
                                  "python -m stages.filter --no-such-flag", "python -m no_such.module",
                                  "faceswap swap --no-such-flag x", "mlflow ui --no-such-flag",
                                  "ray start --no-such-flag"])
def test_the_checks_catch_wrong_commands(text, tmp_path, monkeypatch):
    c = Command("test", text, tuple(_argv(text)), False)
    with pytest.raises(AssertionError):
        test_doc_command_runs_as_written(c, tmp_path, monkeypatch)
