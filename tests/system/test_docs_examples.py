"""
The examples of README.md and docs/*.md still work.

Every ``python`` block is compiled; a block that builds a DAG is loaded as a DAG file by Airflow's DagBag
(the provider's parse-time checks run, so a literal value out of a model's limits is an import error here
as it would be in a deployment), any other block is run as it is (the emulator's example starts an
emulator and generates against it). Shell examples are checked where that is cheap: ``make`` targets
exist in the Makefile, paths of the checkout exist, links between the pages land on a page and heading,
connection ids used by the examples are ones the quick start or the example itself creates, and the
README's quick start is what ``.ci/wheel_quickstart.py`` (run by ``make matrix``) runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if not (REPO / "README.md").exists():
    # make matrix runs the tests of the sdist, which ships the tests but not the docs they read here.
    pytest.skip("README.md and docs/ are not beside the tests (an sdist's tests)", allow_module_level=True)
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_BLOCK = re.compile(
    r"^(?P<indent> *)```(?P<lang>[\w-]*)\n(?P<code>.*?)^(?P=indent)```", re.MULTILINE | re.DOTALL
)
# The connections the README's quick start creates; the examples may use no other (issue 20: the sensor
# and hook snippets named connections nobody had created).
QUICKSTART_CONNECTIONS = {"imggen_default", "imggen_dashscope"}


def _blocks(lang: str) -> list[tuple[str, int, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in _BLOCK.finditer(text):
            if match["lang"] == lang:
                line = text.count("\n", 0, match.start()) + 1
                found.append((str(page.relative_to(REPO)), line, textwrap.dedent(match["code"])))
    return found


PYTHON_BLOCKS = _blocks("python")
SHELL_BLOCKS = _blocks("bash")


def _example_id(block: tuple[str, int, str]) -> str:
    return f"{block[0]}:{block[1]}"


def test_every_page_has_examples_found() -> None:
    assert len(PYTHON_BLOCKS) >= 10, [_example_id(block) for block in PYTHON_BLOCKS]
    assert SHELL_BLOCKS


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """The quick start's connections, from the environment (no server behind them: nothing is sent)."""
    for conn_id, extra in (("imggen_default", {}), ("imggen_dashscope", {"api_style": "dashscope"})):
        conn = {"conn_type": "imggen", "host": "http://127.0.0.1:9/v1", "password": "sk-test", "extra": extra}
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    aws = {
        "conn_type": "aws",
        "login": "test",
        "password": "test",
        "extra": {"endpoint_url": "http://127.0.0.1:9"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(aws))


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=_example_id)
def test_python_example_runs(block: tuple[str, int, str], tmp_path: Path, connections: None) -> None:
    where, _, code = block
    compiled = compile(code, where, "exec")
    if re.search(r"\bDAG\(", code):
        from airflow.dag_processing.dagbag import DagBag

        dag_file = tmp_path / "example_dag.py"
        dag_file.write_text(code)
        bag = DagBag(dag_folder=str(dag_file), safe_mode=False)
        assert not bag.import_errors, f"{where}: the DAG does not load: {bag.import_errors}"
        assert bag.dags, f"{where}: no DAG found"
        for dag in bag.dags.values():
            assert dag.tasks, f"{where}: DAG {dag.dag_id} has no task"
        return
    saved = dict(os.environ)
    try:
        exec(compiled, {"__name__": "__docs_example__"})
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_examples_use_the_connections_the_quick_start_creates() -> None:
    for where, line, code in PYTHON_BLOCKS:
        created_here = set(re.findall(r"AIRFLOW_CONN_([A-Z0-9_]+)", code))
        for conn_id in re.findall(r"imggen_conn_id=\"([^\"]+)\"", code):
            assert conn_id in QUICKSTART_CONNECTIONS or conn_id.upper() in created_here, (
                f"{where}:{line} uses connection {conn_id!r}, which the README's quick start does not create"
            )


def test_dag_ids_are_unique_across_the_pages() -> None:
    seen: dict[str, str] = {}
    for where, line, code in PYTHON_BLOCKS:
        for dag_id in re.findall(r"dag_id=\"([^\"]+)\"", code):
            assert dag_id not in seen, f"{where}:{line} reuses dag_id {dag_id!r} of {seen[dag_id]}"
            seen[dag_id] = f"{where}:{line}"


def _make_targets() -> set[str]:
    makefile = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*):", makefile, re.MULTILINE))


def test_make_targets_named_in_the_pages_exist() -> None:
    targets = _make_targets()
    for page in PAGES:
        for target in re.findall(r"`make ([a-z][\w-]*)", page.read_text()):
            assert target in targets, f"{page.name}: `make {target}` is not a Makefile target"
    for where, line, code in SHELL_BLOCKS:
        for target in re.findall(r"^\s*make ([a-z][\w-]*)", code, re.MULTILINE):
            assert target in targets, f"{where}:{line}: make {target} is not a Makefile target"


def test_checkout_paths_named_in_the_pages_exist() -> None:
    pattern = re.compile(r"(?<![\w/.-])((?:example_dags|benchmarks|tests|\.ci)/[\w./-]*[\w/])")
    for page in PAGES:
        for path in pattern.findall(page.read_text()):
            assert (REPO / path).exists(), f"{page.name} names {path}, which is not in the checkout"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = _BLOCK.sub("", page.read_text())
    return {_slug(heading) for heading in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}


def test_links_between_pages_land() -> None:
    for page in PAGES:
        text = _BLOCK.sub("", page.read_text())
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # https://, mailto:
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name}: link to {target} lands on no file"
            if anchor:
                assert anchor in _anchors(linked), f"{page.name}: link to {target}: no such heading"


def test_the_readme_is_a_front_page() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines"


def _wheel_quickstart():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("wheel_quickstart", REPO / ".ci" / "wheel_quickstart.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_quick_start_is_what_the_matrix_runs(tmp_path: Path, connections: None) -> None:
    """.ci/wheel_quickstart.py takes the README's DAG and runs the commands its shell block shows."""
    quickstart = _wheel_quickstart()
    readme = (REPO / "README.md").read_text()
    dag = quickstart.readme_dag(REPO / "README.md")
    from airflow.dag_processing.dagbag import DagBag

    (tmp_path / "imggen_quickstart.py").write_text(dag)
    bag = DagBag(dag_folder=str(tmp_path), safe_mode=False)
    assert not bag.import_errors, bag.import_errors
    assert set(bag.dags) == {quickstart.DAG_ID}
    assert {task.task_id for task in bag.dags[quickstart.DAG_ID].tasks} == {
        "generate",
        "store",
        "generate_native",
        "store_native",
    }
    shell = next(
        code for where, _, code in SHELL_BLOCKS if where == "README.md" and "airflow dags test" in code
    )
    for command in (
        "airflow db migrate",
        "python -m airflow_provider_imggen.emulator",
        "moto_server",
        "airflow connections add imggen_default --conn-type imggen",
        "airflow connections add imggen_dashscope --conn-type imggen",
        '\'{"api_style": "dashscope"}\'',
        "airflow connections add aws_default --conn-type aws",
        f"create_bucket(Bucket='{quickstart.BUCKET}')",
        f"airflow dags test {quickstart.DAG_ID}",
    ):
        assert command in shell, f"the README's quick start no longer runs {command!r}"
    # What it starts, it stops.
    assert "kill $API_PID $MOTO_PID $EMULATOR_PID" in readme
    for started in ("EMULATOR_PID=$!", "MOTO_PID=$!", "API_PID=$!"):
        assert started in readme
    assert "airflow dags list-import-errors" in readme
    assert "list_objects_v2(Bucket='imggen-quickstart')" in readme
    assert "./dist/airflow_provider_imggen-" in readme


def test_the_providers_list_line_the_readme_shows(connections: None) -> None:
    """The README's `airflow providers list` line: the provider's real name, description and version."""
    from airflow_provider_imggen import __version__
    from airflow_provider_imggen.get_provider_info import get_provider_info

    info = get_provider_info()
    readme = (REPO / "README.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith("airflow-provider-imggen "))
    cells = [cell.strip() for cell in line.split("|")]
    # Airflow's table shows the description without its final full stop (checked with airflow 3.3.2).
    assert cells == [info["package-name"], info["description"].rstrip("."), __version__]
