"""The ``edgeft`` command line: help everywhere, light imports, and exit codes people can act on.

Exit-code tests run the CLI in a fresh process through ``edgeft.cli.main`` (the console-script
entry point), so the EdgeftError -> exit code mapping is what is tested.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from conftest import REPO, tiny_recipe_dict, write_recipe
from edgeft.cli import COMMANDS, cli
from edgeft.errors import ConfigError, DataError, ModelSourceError, VerifyError
from edgeft.pipeline.rundir import STAGES

HEAVY = ("torch", "transformers", "onnxruntime", "onnx", "peft", "trl", "optimum", "datasets")
ENTRY = "from edgeft.cli import main; main()"


def _env() -> dict[str, str]:
    # No COLUMNS/LINES from the calling terminal: rich and click render as they would in CI logs.
    return {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}


def edgeft_cli(*args: str, cwd: Path = REPO, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", ENTRY, *map(str, args)], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _command_paths() -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = [()]
    for name in COMMANDS:
        cmd = cli.get_command(None, name)
        paths.append((name,))
        if isinstance(cmd, click.Group):
            paths += [(name, sub) for sub in cmd.list_commands(None)]
    return paths


def _modules() -> list[str]:
    root = REPO / "edgeft"
    mods = []
    for f in sorted(root.rglob("*.py")):
        parts = f.relative_to(REPO).with_suffix("").parts
        mods.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return mods


# --------------------------------------------------------------------------- help and imports


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "edgeft")
def test_help(path):
    res = CliRunner().invoke(cli, [*path, "--help"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.output


def test_groups_have_subcommands():
    paths = _command_paths()
    assert ("devices", "list") in paths and ("devices", "show") in paths and ("devices", "add") in paths
    assert ("recipes", "validate") in paths
    assert len(paths) > len(COMMANDS) + 1


def test_help_does_not_import_heavy_modules():
    """``edgeft --help`` and every command's --help stay light: no torch/transformers/onnxruntime."""
    code = f"""
import sys
from edgeft.cli import cli
paths = {_command_paths()!r}
for p in paths:
    rc = cli.main([*p, "--help"], standalone_mode=False, prog_name="edgeft")
    assert rc in (0, None), (p, rc)
heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
print("HEAVY:", ",".join(heavy))
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "HEAVY:", res.stdout.splitlines()[-1]


def test_edgeft_help_in_fresh_process():
    code = f"""
import sys
sys.argv = ["edgeft", "--help"]
from edgeft.cli import main
main()
print("HEAVY:", ",".join(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert "Commands" in res.stdout and all(name in res.stdout for name in COMMANDS)
    assert res.stdout.strip().splitlines()[-1] == "HEAVY:"


def test_every_module_imports_in_a_fresh_process():
    """Each module imported first in its own interpreter: catches circular imports and import-time errors."""
    mods = _modules()
    assert "edgeft.cli" in mods and "edgeft.pipeline.run" in mods

    def one(mod: str):
        r = subprocess.run([sys.executable, "-c", f"import {mod}"], cwd=REPO, env=_env(), capture_output=True,
                           text=True, timeout=120)
        return mod, r.returncode, r.stderr

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, mods))
    failed = [f"{m}: {err.strip().splitlines()[-1] if err.strip() else rc}" for m, rc, err in results if rc != 0]
    assert not failed, "modules that fail to import on their own:\n" + "\n".join(failed)


def test_run_dry_run_lists_stages(tiny_recipe, tmp_path):
    res = edgeft_cli("run", tiny_recipe, "--dry-run", "--runs", tmp_path / "runs")
    assert res.returncode == 0, res.stderr
    lines = [ln.split() for ln in res.stdout.splitlines() if ln.strip()]
    assert [ln[0] for ln in lines] == STAGES and all(ln[1:] == ["would", "run"] for ln in lines), res.stdout
    assert not (tmp_path / "runs").exists(), "a dry run writes nothing"


# --------------------------------------------------------------------------- bad input -> exit codes


@pytest.fixture
def recipe_data(tmp_path) -> dict:
    # The model folder is never loaded by these tests (they fail earlier), so any path will do.
    return tiny_recipe_dict(tmp_path / "no-model-needed")


def _no_traceback(res: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in res.stderr, res.stderr


def test_misspelled_key_exit_2(recipe_data, tmp_path):
    recipe_data["finetune"]["lerning_rate"] = 1e-3
    recipe = write_recipe(tmp_path / "typo.yaml", recipe_data)
    res = edgeft_cli("run", recipe, "--dry-run", "--runs", tmp_path / "runs")
    assert res.returncode == ConfigError.exit_code == 2, res.stderr
    assert "finetune.lerning_rate" in res.stderr
    assert "did you mean 'learning_rate'" in res.stderr
    _no_traceback(res)


def test_unknown_device_exit_2(recipe_data, tmp_path):
    recipe_data["validate"]["devices"] = ["host", "pi6"]
    recipe = write_recipe(tmp_path / "device.yaml", recipe_data)
    res = edgeft_cli("run", recipe, "--dry-run", "--runs", tmp_path / "runs")
    assert res.returncode == 2, res.stderr
    assert "validate.devices.1" in res.stderr and "'pi6'" in res.stderr
    for name in ("edge-tpu", "host", "phone-cpu", "pi5"):
        assert name in res.stderr
    _no_traceback(res)
    # the same problem through `recipes validate`
    res = edgeft_cli("recipes", "validate", recipe)
    assert res.returncode == 2 and "'pi6'" in res.stderr


def test_missing_model_exit_4(recipe_data, tmp_path):
    recipe_data["model"] = "/nonexistent/folder"
    recipe = write_recipe(tmp_path / "missing-model.yaml", recipe_data)
    res = edgeft_cli("run", recipe, "--runs", tmp_path / "runs")
    assert res.returncode == ModelSourceError.exit_code == 4, res.stderr
    assert "/nonexistent/folder" in res.stderr
    _no_traceback(res)
    run_dir = tmp_path / "runs" / recipe_data["name"]
    assert not run_dir.exists(), "a missing model fails before any stage writes anything"
    # --dry-run checks the model too
    res = edgeft_cli("run", recipe, "--dry-run", "--runs", tmp_path / "runs")
    assert res.returncode == 4 and "/nonexistent/folder" in res.stderr


def test_malformed_jsonl_row_exit_3(recipe_data, tmp_path, tiny_lm_dir):
    recipe_data["model"] = str(tiny_lm_dir)  # a real model folder: the data error must be what stops the run
    good = '{"prompt": "set a timer for 5 minutes", "response": "{\\"intent\\":\\"set_timer\\"}"}'
    (tmp_path / "train.jsonl").write_text(f"{good}\n{good}\n{{\"prompt\": \"oops\", \"response\": \n{good}\n")
    (tmp_path / "eval.jsonl").write_text(f"{good}\n")
    del recipe_data["data"]["generated"]
    recipe_data["data"]["files"] = {"train": "train.jsonl", "eval": "eval.jsonl"}
    recipe = write_recipe(tmp_path / "files.yaml", recipe_data)
    res = edgeft_cli("run", recipe, "--runs", tmp_path / "runs")
    assert res.returncode == DataError.exit_code == 3, res.stderr
    assert "train.jsonl:3" in res.stderr
    _no_traceback(res)


# --------------------------------------------------------------------------- devices, recipes, verify


def test_devices_list():
    from edgeft.config.loader import list_devices

    res = edgeft_cli("devices", "list")
    assert res.returncode == 0, res.stderr
    profiles = list_devices()
    assert len(profiles) >= 3
    assert {"mobile", "tpu", "edge"} <= {d.class_ for d in profiles}
    rows = res.stdout.splitlines()
    for d in profiles:
        assert any(d.name in row and d.class_ in row for row in rows), f"no row shows {d.name} ({d.class_}):\n" \
                                                                     + res.stdout


def test_devices_show_prints_source():
    from edgeft.config.loader import load_device

    res = edgeft_cli("devices", "show", "pi5")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("name: pi5")
    assert "\nsource:" in res.stdout
    assert load_device("pi5").source.split()[0] in res.stdout.split("\nsource:", 1)[1]


def test_devices_show_unknown_exit_2():
    res = edgeft_cli("devices", "show", "pi6")
    assert res.returncode == 2 and "pi5" in res.stderr
    _no_traceback(res)


def test_devices_add_then_clash_and_invalid_name_exit_2(tmp_path, monkeypatch):
    import shutil

    shutil.copytree(REPO / "devices", tmp_path / "devices")
    monkeypatch.setenv("EDGEFT_HOME", str(tmp_path))  # edgeft_cli passes the environment on
    ok = edgeft_cli("devices", "add", "my-board", "--from", "phone-npu")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "devices" / "my-board.yaml").is_file() and "next steps:" in ok.stdout
    shown = edgeft_cli("devices", "show", "my-board")
    assert shown.returncode == 0 and "source: 'edit me:" in shown.stdout
    clash = edgeft_cli("devices", "add", "my-board")
    assert clash.returncode == 2 and "a device profile named 'my-board' already exists" in clash.stderr
    bad = edgeft_cli("devices", "add", "My_Board")
    assert bad.returncode == 2 and "lowercase letters, digits and single dashes" in bad.stderr
    assert not (tmp_path / "devices" / "My_Board.yaml").exists()
    for res in (clash, bad):
        _no_traceback(res)


def test_recipes_validate_folder():
    res = edgeft_cli("recipes", "validate", "recipes/")
    failed = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("FAIL")]
    if not (Path(__file__).resolve().parents[1].parent / "shared" / "data").is_dir():
        # recipes that read ../shared/data fail validation when it is absent; every other recipe must pass
        failed = [ln for ln in failed if "/shared/data/" not in ln]
        assert not failed, "\n".join(failed)
    else:
        assert res.returncode == 0, res.stderr
    assert "ok" in res.stdout and "quickstart.yaml" in res.stdout


def _tiny_bundle(tmp_path: Path) -> Path:
    from edgeft.release import package

    src = tmp_path / "src"
    src.mkdir()
    (src / "model.onnx").write_bytes(bytes(range(256)) * 8)
    (src / "report.json").write_text('{"passed": true}')
    res = package("clitest", "1.0.0", tmp_path / "out", {"artifacts/int4/model.onnx": src / "model.onnx",
                                                          "report.json": src / "report.json"},
                  {"recipe": "clitest"}, "# clitest\n", "license text\n", tarball=False)
    return res.bundle_dir


def test_verify_ok_and_tampered_exit_8(tmp_path):
    bundle = _tiny_bundle(tmp_path)
    ok = edgeft_cli("verify", bundle)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout
    target = bundle / "artifacts" / "int4" / "model.onnx"
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    bad = edgeft_cli("verify", bundle)
    assert bad.returncode == VerifyError.exit_code == 8, bad.stderr
    assert "artifacts/int4/model.onnx" in bad.stderr and "sha256 mismatch" in bad.stderr
    _no_traceback(bad)


def test_public_api_functions_are_callable_after_their_subpackages_import():
    """`edgeft.quantize` is both the stage function and the sub-package holding the schemes."""
    import edgeft
    import edgeft.finetune
    import edgeft.merge
    import edgeft.quantize
    import edgeft.validate

    for name in edgeft.__all__:
        assert callable(getattr(edgeft, name)), name
    assert "int4-rtn" in edgeft.quantize.SCHEMES.names()
    with pytest.raises(edgeft.errors.ConfigError, match="unknown quantization scheme"):
        edgeft.quantize("/nonexistent", "/nonexistent-out", "int3-magic")


def test_cli_quiets_library_warnings_but_not_edgefts_own():
    import warnings

    from edgeft.cli import quiet_third_party_warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_third_party_warnings()
        for module in ("transformers.utils.generic", "edgeft.finetune.speed", "edgeft", "edgeft_other"):
            for category in (DeprecationWarning, FutureWarning, UserWarning):
                warnings.warn_explicit(f"{category.__name__} from {module}", category, "x.py", 1, module=module)
    shown = sorted(str(w.message) for w in seen)
    assert shown == sorted(f"{c} from {m}" for m in ("edgeft.finetune.speed", "edgeft")
                           for c in ("DeprecationWarning", "FutureWarning", "UserWarning")), shown
