#!/usr/bin/env python3
"""
``make matrix``: the provider as users install it, against every supported Airflow, in fresh venvs.

1. Builds the sdist, then the wheel from the sdist (``uv build``), once, and checks both with
   ``twine check --strict``.
2. For each environment of ``ENVIRONMENTS`` (each supported Airflow minor line at its newest patch, and
   one with the lowest declared version of every direct dependency, ``uv --resolution lowest-direct``):
   a fresh venv, the built wheel (not editable) with its ``test`` extra, then the smoke subset (pytest
   marker ``matrix``) of the test suite taken from the unpacked sdist, run from a temp dir that holds no
   source of the package: the suite imports the installed wheel, and a test checks it does.
3. ``quickstart``: a venv with only the wheel and what the README's quick start installs (the emulator
   extra and moto's server), and .ci/wheel_quickstart.py (the README's quick start) in an empty directory.
4. Prints the table: environment, Airflow, Python, dependencies, result, time. Exits 1 if one failed.

Only CPython 3.11 exists on the machine this was written on (and none other can be fetched), so it is both
the lowest and the newest Python here; ``--python`` runs the matrix with others where they exist.

    .ci/matrix.py [--only newest,lowest,quickstart] [--python 3.11] [--keep]
    .ci/matrix.py --only lowest --override "pillow==10.0.1"   # is a floor tight? (uv's --override)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
UV = shutil.which("uv", path=str(REPO / ".venv" / "bin")) or shutil.which("uv") or "uv"
# The Airflow minor lines the provider supports, each at its newest patch release (README: Supported
# versions). 3.1 and 3.2 are not supported: see the README for why.
SUPPORTED_AIRFLOW = ("3.3.2",)
# What a quick start from the wheel needs besides the provider: the emulator and a local S3 endpoint.
QUICKSTART_EXTRAS = ("moto[server]>=5",)
# Shown in the table: what decides whether the provider works.
SHOWN_PACKAGES = (
    "apache-airflow-task-sdk",
    "apache-airflow-providers-amazon",
    "apache-airflow-providers-common-compat",
    "apache-airflow-providers-standard",
    "pillow",
    "requests",
    "httpx",
)


@dataclass
class Environment:
    name: str
    airflow: str | None  # pinned Airflow version, or None: what the resolution picks
    lowest: bool = False
    quickstart: bool = False
    versions: dict[str, str] = field(default_factory=dict)
    result: str = "not run"
    seconds: float = 0.0
    log: Path | None = None


def environments() -> list[Environment]:
    found = [Environment(f"newest-{version}", version) for version in SUPPORTED_AIRFLOW]
    found.append(Environment("lowest", None, lowest=True))
    found.append(Environment("quickstart", SUPPORTED_AIRFLOW[-1], quickstart=True))
    return found


def run(command: list[str], log: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command, its output appended to ``log``; raise with the log's tail when it fails."""
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        finished = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, text=True, **kwargs)  # type: ignore[call-overload]
    if finished.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"exit {finished.returncode}: {' '.join(command)}\n{tail}")
    return finished


def build(work: Path, log: Path) -> tuple[Path, Path]:
    """The sdist and the wheel built from it (uv builds the wheel from the unpacked sdist)."""
    dist = work / "dist"
    run([UV, "build", "--out-dir", str(dist), str(REPO)], log)
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    return sdist, wheel


def runtime_requirements(wheel: Path) -> list[str]:
    """The wheel's own dependencies (Requires-Dist without an extra), and its emulator extra's."""
    with zipfile.ZipFile(wheel) as archive:
        (metadata_name,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        metadata = archive.read(metadata_name).decode()
    requirements = []
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist: "):
            continue
        requirement, _, marker = line.removeprefix("Requires-Dist: ").partition(";")
        if not marker or 'extra == "emulator"' in marker:
            requirements.append(requirement.strip())
    return requirements


def suite_from_sdist(sdist: Path, work: Path) -> Path:
    """The tests (and what they import: benchmarks, example DAGs) from the sdist, without the package."""
    unpacked = work / "sdist"
    with tarfile.open(sdist) as archive:
        archive.extractall(unpacked, filter="data")
    (root,) = unpacked.iterdir()
    suite = work / "suite"
    suite.mkdir()
    for part in ("tests", "benchmarks", "example_dags"):
        shutil.copytree(root / part, suite / part)
    # pytest's settings (markers, warning filters) only; the suite dir has no package source.
    shutil.copy(root / "pyproject.toml", suite / "pyproject.toml")
    assert not (suite / "airflow_provider_imggen").exists()
    return suite


def installed_versions(python: Path) -> dict[str, str]:
    script = (
        "import json, importlib.metadata as m; "
        f"print(json.dumps({{n: m.version(n) for n in {['apache-airflow', *SHOWN_PACKAGES]!r}}}))"
    )
    shown = subprocess.run([str(python), "-c", script], capture_output=True, text=True, check=True)
    return json.loads(shown.stdout)


def site_packages(python: Path) -> Path:
    shown = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(shown.stdout.strip())


def prepare(env: Environment, wheel: Path, work: Path, python_version: str, overrides: list[str]) -> Path:
    """A fresh venv with the built wheel and what this environment adds; its python."""
    venv = work / f"venv-{env.name}"
    assert env.log is not None
    run([UV, "venv", "--quiet", "--python", python_version, str(venv)], env.log)
    python = venv / "bin" / "python"
    # Bytecode compiled at install, as pip does by default: what users' venvs hold.
    install = [UV, "pip", "install", "--quiet", "--compile-bytecode", "--python", str(python)]
    if overrides:
        # Below a declared floor on purpose, to show the floor is needed.
        (work / "overrides.txt").write_text("\n".join(overrides) + "\n")
        install += ["--override", str(work / "overrides.txt")]
    if env.quickstart:
        run([*install, f"{wheel}[emulator]", *QUICKSTART_EXTRAS], env.log)
    elif env.lowest:
        # lowest-direct lowers what is named here: the wheel's own dependencies, not the test tools.
        requirements = work / "lowest-direct.txt"
        requirements.write_text("\n".join(runtime_requirements(wheel)) + "\n")
        run([*install, "--resolution", "lowest-direct", "-r", str(requirements), f"{wheel}[test]"], env.log)
    else:
        run([*install, f"{wheel}[test]", f"apache-airflow=={env.airflow}"], env.log)
    env.versions = installed_versions(python)
    return python


def smoke(env: Environment, python: Path, suite: Path, work: Path) -> None:
    """The matrix subset of the sdist's suite, against the installed wheel."""
    assert env.log is not None
    where = site_packages(python)
    run_dir = work / f"run-{env.name}"
    shutil.copytree(suite, run_dir)
    environ = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "PYTHON"))}
    environ |= {"IMGGEN_EXPECT_INSTALLED_IN": str(where), "PATH": f"{python.parent}:{environ['PATH']}"}
    run(
        [str(python), "-c", "import airflow_provider_imggen as p; print('imports', p.__file__)"],
        env.log,
        cwd=run_dir,
        env=environ,
    )
    run(
        [str(python), "-m", "pytest", "-m", "matrix", "-p", "no:cacheprovider", "-q", "-s", "--no-header"],
        env.log,
        cwd=run_dir,
        env=environ,
        timeout=1200,
    )


def quickstart(env: Environment, python: Path, work: Path) -> None:
    """The README's quick start, from an empty directory, with only the wheel (and moto's server)."""
    assert env.log is not None
    empty = work / "empty-dir"
    empty.mkdir()
    environ = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "PYTHON"))}
    environ["PATH"] = f"{python.parent}:{environ['PATH']}"
    script = REPO / ".ci" / "wheel_quickstart.py"
    command = [str(python), str(script), "--readme", str(REPO / "README.md")]
    run(command, env.log, cwd=empty, env=environ, timeout=900)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated environment names or prefixes")
    parser.add_argument("--python", default="3.11", help="the Python version of the venvs")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (venvs, logs)")
    parser.add_argument(
        "--override", action="append", default=[], help="a requirement replacing the declared one"
    )
    args = parser.parse_args()

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="imggen-matrix-"))
    chosen = [
        env
        for env in environments()
        if not args.only or any(env.name.startswith(name) for name in args.only.split(","))
    ]
    failed = False
    try:
        build_log = work / "build.log"
        print(f"Building the sdist and the wheel (log: {build_log})...", flush=True)
        sdist, wheel = build(work, build_log)
        suite = suite_from_sdist(sdist, work)
        for env in chosen:
            env.log = work / f"{env.name}.log"
            print(f"[{env.name}] preparing a fresh venv (log: {env.log})...", flush=True)
            env_started = time.monotonic()
            try:
                python = prepare(env, wheel, work, args.python, args.override)
                # twine is a test tool: checked once, with the first venv that has the test extra.
                if not env.quickstart and not (work / "twine.log").exists():
                    run([str(python), "-m", "twine", "check", "--strict", str(sdist), str(wheel)],
                        work / "twine.log")  # fmt: skip
                    print(f"twine check --strict: PASSED for {sdist.name} and {wheel.name}", flush=True)
                if env.quickstart:
                    quickstart(env, python, work)
                else:
                    smoke(env, python, suite, work)
                env.result = "pass"
            except (RuntimeError, subprocess.SubprocessError) as error:
                env.result = "FAIL"
                failed = True
                print(f"[{env.name}] FAILED: {str(error)[-2500:]}", flush=True)
            env.seconds = time.monotonic() - env_started
            print(f"[{env.name}] {env.result} in {env.seconds:.0f} s", flush=True)
    finally:
        print_table(chosen, args.python, time.monotonic() - started, ", ".join(args.override))
        if args.keep or failed:
            print(f"Kept the work dir (venvs, logs): {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


def print_table(
    chosen: list[Environment], python_version: str, total: float, overrides_shown: str = ""
) -> None:
    print()
    print("| environment | Airflow | Python | dependencies | result | time |")
    print("|---|---|---|---|---|---|")
    for env in chosen:
        versions = env.versions
        if env.lowest:
            deps = "lowest-direct: " + ", ".join(
                f"{name.removeprefix('apache-airflow-providers-')} {versions[name]}"
                for name in SHOWN_PACKAGES
                if name in versions
            )
            if overrides_shown:
                deps += f"; overridden: {overrides_shown}"
        elif env.quickstart:
            deps = "the wheel + [emulator] + moto[server] only; README quick start"
        else:
            deps = "newest" + (f" (amazon {versions['apache-airflow-providers-amazon']})" if versions else "")
        airflow = versions.get("apache-airflow", env.airflow or "?")
        print(f"| {env.name} | {airflow} | {python_version} | {deps} | {env.result} | {env.seconds:.0f} s |")
    print(f"\nmake matrix: {total:.0f} s in all (build, {len(chosen)} venvs, tests)")


if __name__ == "__main__":
    sys.exit(main())
