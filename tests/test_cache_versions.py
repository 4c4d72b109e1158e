"""Cache versions follow the code: computed from each stage's sources, they change with
the code a stage runs, ignore comments, and are the same on every machine and checkout."""

from __future__ import annotations

import ast
import io
import os
import shutil
import tokenize

import pytest

from tasks import cache_versions as cv

ROOT = cv.ROOT
_IGNORED = {"tasks/cache_versions.py", "tasks/resources.py"}  # versions and resource requests, not behaviour


# ---- copies of the tree ------------------------------------------------------------------


def _all_sources(root: str = ROOT) -> set[str]:
    return set().union(*(cv.stage_files(stage, root) for stage in cv.STAGE_SOURCES))


def _copy_tree(dst) -> str:
    """Every stage source file copied under `dst`, at its relative path."""
    for rel in _all_sources():
        target = os.path.join(dst, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(ROOT, rel), target)
    return str(dst)


def _stages_listing(rel: str) -> set[str]:
    return {stage for stage in cv.STAGE_SOURCES if rel in cv.stage_files(stage)}


def _changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {stage for stage in before if before[stage] != after[stage]}


def _code_edit(path: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n_CACHE_VERSION_TEST_EDIT = 1\n")


def _comment_edit(path: str) -> None:
    """Comments and blank lines added: on a line of their own, at the end of the first
    statement's line, and at the end of the file."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = text.splitlines(keepends=True)
    first_newline = next(t for t in tokenize.generate_tokens(io.StringIO(text).readline)
                         if t.type == tokenize.NEWLINE)
    row, col = first_newline.start
    lines[row - 1] = lines[row - 1][:col] + "  # an inline comment" + lines[row - 1][col:]
    lines.insert(0, "# a new comment\n\n")
    edited = "".join(lines) + "\n\n# a closing comment\n"
    ast.parse(edited)
    with open(path, "w", encoding="utf-8") as f:
        f.write(edited)


# ---- the digest of one file --------------------------------------------------------------


def _digest_of(tmp_path, text: str, name: str = "m.py", newline: str = "\n") -> str:
    path = tmp_path / name
    path.write_bytes(text.replace("\n", newline).encode())
    return cv.file_digest(str(path))


def test_python_digest_ignores_comments_and_blank_lines_only(tmp_path):
    base = _digest_of(tmp_path, 'def f(x):\n    """Doc."""\n    return x + 1\n')
    same = [
        '# header\n\ndef f(x):  # why\n    """Doc."""\n\n    # explained\n    return x + 1\n\n',
        'def f(x):\n    """Doc."""\n    return x + 1',  # no newline at the end
        'def f( x ):\n    """Doc."""\n    return x+1\n',  # spacing inside a line
    ]
    for text in same:
        assert _digest_of(tmp_path, text) == base, text
    assert _digest_of(tmp_path, 'def f(x):\n    """Doc."""\n    return x + 1\n', newline="\r\n") == base
    # a statement over several lines, with a comment inside the brackets
    assert _digest_of(tmp_path, "y = (1 +\n     # continued\n     2)\n") == _digest_of(tmp_path, "y = (1 + 2)\n")
    different = [
        'def f(x):\n    """Doc."""\n    return x + 2\n',  # code
        'def f(x):\n    """Other doc."""\n    return x + 1\n',  # docstrings count
        'def f(x):\n    """Doc."""\n    return x + 1\ns = "# not a comment"\n',  # strings count
        'def f(x):\n    """Doc."""\nreturn x + 1\n',  # indentation is code
    ]
    for text in different:
        assert _digest_of(tmp_path, text) != base, text


def test_other_files_count_by_their_bytes(tmp_path):
    base = _digest_of(tmp_path, "a: 1\n", name="c.yaml")
    assert _digest_of(tmp_path, "a: 1\n# note\n", name="c.yaml") != base
    assert _digest_of(tmp_path, "a: 1\n", name="c.yaml") == base


# ---- stage versions ------------------------------------------------------------------------


# (a file, the only stage that lists it): an edit there changes that stage's version alone
OWN_SOURCES = [
    ("tasks/rollout.py", "rollout"),
    ("tasks/reward.py", "reward"),
    ("tasks/recycle.py", "recycle"),
    ("spark_core/evaluate/judge_set.py", "judge_eval_set"),
    ("spark_core/evaluate/report.py", "evaluate"),
    ("spark_core/train/sft.py", "bootstrap"),
    ("spark_core/rollout/colocated.py", "segment"),
]


@pytest.mark.parametrize("rel,stage", OWN_SOURCES)
def test_editing_a_stages_own_source_changes_only_its_version(tmp_path, rel, stage):
    assert _stages_listing(rel) == {stage}, f"{rel} is no longer {stage}'s alone: update OWN_SOURCES"
    root = _copy_tree(tmp_path)
    before = cv.versions(root)
    _code_edit(os.path.join(root, rel))
    assert _changed(before, cv.versions(root)) == {stage}


@pytest.mark.parametrize("rel", ["spark_core/config.py", "tasks/common.py", "spark_core/model/loading.py",
                                 "spark_core/reward/verifier.py"])
def test_shared_files(tmp_path, rel):
    """A comment-only edit in a shared file changes no version; a code edit changes the
    version of every stage that lists the file, and of no other."""
    listing = _stages_listing(rel)
    assert len(listing) > 1
    root = _copy_tree(tmp_path)
    before = cv.versions(root)
    assert before == cv.versions()  # the copy holds every source
    _comment_edit(os.path.join(root, rel))
    assert cv.versions(root) == before
    _code_edit(os.path.join(root, rel))
    assert _changed(before, cv.versions(root)) == listing


def test_a_new_file_in_a_globbed_folder_counts(tmp_path):
    root = _copy_tree(tmp_path)
    before = cv.versions(root)
    (tmp_path / "spark_core" / "reward" / "extra.py").write_text("X = 1\n")
    assert _changed(before, cv.versions(root)) == _stages_listing("spark_core/reward/verifier.py")


def test_versions_are_the_same_in_every_copy_of_the_tree(tmp_path):
    a = _copy_tree(tmp_path / "a")
    b = _copy_tree(tmp_path / "somewhere" / "else" / "b")
    assert cv.versions(a) == cv.versions(b) == cv.versions()
    assert len(set(cv.versions().values())) == len(cv.STAGE_TASKS)  # stages never share a version


def test_the_policy_is_what_flytekit_uses():
    from flytekit.core.cache import CachePolicy, VersionParameters

    policy = cv.StageSources("rollout")
    assert isinstance(policy, CachePolicy)
    cache = cv.stage_cache("rollout")
    assert cache.version is None
    params = VersionParameters(func=test_the_policy_is_what_flytekit_uses)
    assert cache.get_version(params) == cv.stage_version("rollout")
    assert policy.get_version("a salt", params) != policy.get_version("", params)
    with pytest.raises(KeyError):
        cv.StageSources("no_such_stage")


def test_cli_prints_every_version(capsys):
    assert cv.main([]) == 0
    out = capsys.readouterr().out.split("\n")
    assert [line.split() for line in out if line] == [[s, v] for s, v in cv.versions().items()]
    assert cv.main(["reward"]) == 0
    out = capsys.readouterr().out
    assert cv.stage_version("reward") in out and "tasks/reward.py" in out and "rollout" not in out


def test_flytes_local_cache_keys_on_the_policy(tmp_path, monkeypatch):
    """A cached task runs once per version: the second call is a cache hit, a comment edit
    still hits, a code edit in the stage's sources misses."""
    from flytekit import task
    from flytekit.core import local_cache

    src = tmp_path / "src"
    src.mkdir()
    (src / "mod.py").write_text("X = 1\n")
    monkeypatch.setitem(cv.STAGE_SOURCES, "toy", ["src/*.py"])
    monkeypatch.setenv("FLYTE_LOCAL_CACHE_ENABLED", "true")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(local_cache, "CACHE_LOCATION", str(tmp_path / "local-cache"))
    monkeypatch.setattr(local_cache.LocalTaskCache, "_initialized", False)
    monkeypatch.setattr(local_cache.LocalTaskCache, "_cache", None, raising=False)
    runs = []

    def run() -> int:  # the task as a module defines it, decorated anew at each "import"
        @task(cache=cv.stage_cache("toy", root=str(tmp_path)))
        def toy_stage(x: int) -> int:
            runs.append(x)
            return x + 1

        return toy_stage(x=1)

    assert run() == 2 and len(runs) == 1
    assert run() == 2 and len(runs) == 1  # hit
    (src / "mod.py").write_text("# a comment\nX = 1  # one\n")
    assert run() == 2 and len(runs) == 1  # comments do not change the version
    (src / "mod.py").write_text("X = 2\n")
    assert run() == 2 and len(runs) == 2  # new version: a miss
    assert run() == 2 and len(runs) == 2


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


@pytest.mark.parametrize("stage", sorted(cv.STAGE_TASKS))
def test_stage_sources_cover_its_imports(stage):
    needed = set().union(*(_closure(task_file, func) for task_file, func in cv.STAGE_TASKS[stage]))
    missing = sorted(needed - set(cv.stage_files(stage)))
    assert not missing, f"stage {stage!r} runs code from {missing}: add them to STAGE_SOURCES[{stage!r}]"


def test_each_cached_task_uses_its_stage_cache():
    """Every cached task is a stage here, and its decorator reads `stage_cache(stage)`."""
    assert set(cv.STAGE_TASKS) == set(cv.STAGE_SOURCES)
    found, other_caches = {}, []
    for name in sorted(os.listdir(os.path.join(ROOT, "tasks"))):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(ROOT, "tasks", name), encoding="utf-8").read())
        for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
            for dec in fn.decorator_list:
                for sub in ast.walk(dec):
                    if (isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id == "stage_cache"
                            and sub.args and isinstance(sub.args[0], ast.Constant)):
                        found.setdefault(sub.args[0].value, []).append((f"tasks/{name}", fn.name))
                    elif isinstance(sub, ast.keyword) and sub.arg in ("cache", "cache_version") and not (
                            isinstance(sub.value, ast.Call) and isinstance(sub.value.func, ast.Name)
                            and sub.value.func.id == "stage_cache"):
                        other_caches.append((f"tasks/{name}", fn.name))
    assert not other_caches, f"cached tasks without stage_cache(...): {other_caches}"
    assert {k: sorted(v) for k, v in found.items()} == {k: sorted(v) for k, v in cv.STAGE_TASKS.items()}
