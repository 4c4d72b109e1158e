"""Cache versions cannot silently go stale: changed sources need a version bump."""

from __future__ import annotations

import ast
import os

import pytest

from tasks import cache_versions as cv

ROOT = cv.ROOT
_IGNORED = {"tasks/cache_versions.py", "tasks/resources.py"}  # versions and resource requests, not behaviour


def test_every_stage_is_recorded_at_its_current_version():
    recorded, now = cv.load_recorded(), cv.current()
    assert set(recorded) == set(cv.CACHE_VERSIONS), (
        "tasks/cache_fingerprints.json and CACHE_VERSIONS list different stages; "
        "run `python -m tasks.cache_versions --update`")
    pending = cv.unrecorded_stages(recorded, now)
    assert not pending, (f"stages {pending} have a version that is not recorded; "
                         "run `python -m tasks.cache_versions --update`")


def test_changed_sources_have_a_bumped_version():
    stale = cv.stale_stages(cv.load_recorded(), cv.current())
    assert not stale, cv.stale_message(stale)


def test_update_refuses_stale_and_records_bumped(tmp_path):
    def rec(version, files):
        return {"version": version, "fingerprint": cv.combine(files), "files": files}

    recorded = {"a": rec("1", {"x.py": "h1"}), "b": rec("1", {"y.py": "h2"}), "gone": rec("1", {"z.py": "h"})}
    now = {"a": rec("1", {"x.py": "h1-new"}), "b": rec("2", {"y.py": "h2-new"}), "c": rec("1", {"w.py": "h3"})}
    new, stale = cv.plan_update(recorded, now)
    assert stale == {"a": ["x.py (modified)"]}
    msg = cv.stale_message(stale)
    assert "a (version" in msg and "x.py (modified)" in msg
    assert new["b"] == now["b"] and new["c"] == now["c"] and new["a"] == recorded["a"] and "gone" not in new
    # once "a" is bumped, nothing is stale and the record follows the code
    now["a"]["version"] = "2"
    new, stale = cv.plan_update(recorded, now)
    assert not stale and new == now
    # a version bump without a code change is fine too
    same = {"a": rec("3", {"x.py": "h1"})}
    new, stale = cv.plan_update({"a": rec("1", {"x.py": "h1"})}, same)
    assert not stale and new == same


def test_cli_refuses_and_names_files(tmp_path, monkeypatch, capsys):
    src = tmp_path / "tasks"
    src.mkdir()
    (src / "mod.py").write_text("x = 1\n")
    monkeypatch.setattr(cv, "CACHE_VERSIONS", {"s": "1"})
    monkeypatch.setattr(cv, "STAGE_SOURCES", {"s": ["tasks/*.py"]})
    fp = str(tmp_path / "fp.json")

    def run(*args):
        return cv.main(list(args), root=str(tmp_path), path=fp)

    assert run() == 1  # nothing recorded yet
    assert run("--update") == 0
    assert run() == 0
    (src / "mod.py").write_text("x = 2\n")
    before = (tmp_path / "fp.json").read_text()
    assert run("--update") == 1
    err = capsys.readouterr().err
    assert "s (version 1)" in err and "tasks/mod.py (modified)" in err and "Nothing written" in err
    assert (tmp_path / "fp.json").read_text() == before
    monkeypatch.setattr(cv, "CACHE_VERSIONS", {"s": "2"})
    assert run("--update") == 0 and run() == 0


# ---- the source lists cover what each stage really imports ------------------------------


def _module_file(mod: str) -> str | None:
    base = os.path.join(ROOT, *mod.split("."))
    for cand in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.exists(cand):
            return os.path.relpath(cand, ROOT).replace(os.sep, "/")
    return None


def _files_of_import(node: ast.AST) -> set[str]:
    """Project files executed by one import statement (the module, its packages, submodules)."""
    mods: list[str] = []
    if isinstance(node, ast.Import):
        mods = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    out = set()
    for m in mods:
        if m.split(".")[0] not in ("spark_core", "tasks"):
            continue
        parts = m.split(".")
        for i in range(1, len(parts) + 1):  # parent packages run their __init__ too
            f = _module_file(".".join(parts[:i]))
            if f:
                out.add(f)
    return out


def _imports_in(tree: ast.AST) -> set[str]:
    return set().union(*(_files_of_import(n) for n in ast.walk(tree)
                         if isinstance(n, (ast.Import, ast.ImportFrom)))) if tree else set()


def _closure(task_file: str, func: str) -> set[str]:
    tree = ast.parse(open(os.path.join(ROOT, task_file), encoding="utf-8").read())
    fn = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == func]
    assert fn, f"{task_file} has no function {func}"
    top = set().union(*(_files_of_import(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))))
    todo = {task_file} | top | _imports_in(fn[0])
    seen: set[str] = set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        if f.startswith("spark_core/") or f in top:  # follow project modules, lazy imports included
            todo |= _imports_in(ast.parse(open(os.path.join(ROOT, f), encoding="utf-8").read())) - seen
    return seen - _IGNORED


@pytest.mark.parametrize("stage", sorted(cv.CACHE_VERSIONS))
def test_stage_sources_cover_its_imports(stage):
    needed = set().union(*(_closure(task_file, func) for task_file, func in cv.STAGE_TASKS[stage]))
    missing = sorted(needed - set(cv.stage_files(stage)))
    assert not missing, f"stage {stage!r} runs code from {missing}: add them to STAGE_SOURCES[{stage!r}]"


def test_each_cached_task_uses_its_stage_version():
    """Every cached task is a stage here, and its decorator reads CACHE_VERSIONS[stage]."""
    found = {}
    for name in sorted(os.listdir(os.path.join(ROOT, "tasks"))):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(ROOT, "tasks", name), encoding="utf-8").read())
        for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
            for dec in fn.decorator_list:
                for sub in ast.walk(dec):
                    if (isinstance(sub, ast.Subscript) and isinstance(sub.value, ast.Name)
                            and sub.value.id == "CACHE_VERSIONS" and isinstance(sub.slice, ast.Constant)):
                        found.setdefault(sub.slice.value, []).append((f"tasks/{name}", fn.name))
    assert {k: sorted(v) for k, v in found.items()} == {k: sorted(v) for k, v in cv.STAGE_TASKS.items()}
