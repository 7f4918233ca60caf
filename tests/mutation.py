"""Mutation testing (mutmut 3) of the modules that compute what users publish, each against its own fast tests.

    python tests/mutation.py                      # every module below (make mutation)
    python tests/mutation.py files losses         # some of them
    python tests/mutation.py --list               # the modules and their test files

Each module runs in its own workspace ``build/mutation/<module>/`` (a copy of ``ceexp/``, ``configs/`` and
``tests/`` with a ``pyproject.toml`` naming that module and its test files), so a mutant runs only the tests of
its module that reach the mutated function: seconds, not minutes. mutmut never edits the working tree (it
mutates a copy under ``<workspace>/mutants/``) and keeps its results there, so a second run only tries what
changed. Each module ends with its score (killed / tried) and the survivors not listed in
``tests/mutation_equivalents.md`` (equivalent mutants, each with its reason): those need a test.

Not part of the fast suite or CI: a module takes from one to several minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# module -> the fast test files that cover it (the per-module selection; the slow and promise tests never run)
MODULES: dict[str, list[str]] = {
    "files": ["tests/test_files.py", "tests/test_atomic_files.py"],
    "losses": ["tests/test_losses.py", "tests/test_loss_zoo.py", "tests/test_loss_updates.py",
               "tests/test_thresholds.py"],
    "calibration": ["tests/test_calibration.py", "tests/test_calibrators.py", "tests/test_thresholds.py"],
    "metrics": ["tests/test_metrics.py", "tests/test_selective.py", "tests/test_metric_fixtures.py",
                "tests/test_thresholds.py"],
    "stats": ["tests/test_stats.py"],
    "runs": ["tests/test_runs.py"],
}
EQUIVALENTS = ROOT / "tests" / "mutation_equivalents.md"


def _toml(value) -> str:
    """A TOML value for the plain strings, booleans, numbers and lists of them written below."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def prepare(module: str) -> Path:
    """Lay out ``build/mutation/<module>/`` afresh (keeping mutmut's ``mutants/`` results) and return it."""
    work = ROOT / "build" / "mutation" / module
    work.mkdir(parents=True, exist_ok=True)
    for name in ("ceexp", "configs", "tests"):
        shutil.rmtree(work / name, ignore_errors=True)
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    pytest_ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    mutmut = {
        "source_paths": ["ceexp"],
        "only_mutate": [f"ceexp/{module}.py"],
        "also_copy": ["configs"],
        "pytest_add_cli_args_test_selection": MODULES[module],
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-W", "ignore"],
        # torch is not fork-safe once it has run: each mutant forks from a process that only imported the tests
        "process_isolation": "forkserver",
        "on_dependency_change": "ignore",
    }
    text = "[tool.mutmut]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in mutmut.items())
    text += "\n[tool.pytest.ini_options]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in pytest_ini.items())
    (work / "pyproject.toml").write_text(text)
    return work


def equivalents() -> dict[str, str]:
    """``{mutant name: reason}`` from the table of tests/mutation_equivalents.md."""
    found = {}
    for line in EQUIVALENTS.read_text().splitlines() if EQUIVALENTS.exists() else []:
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("ceexp."):
            found[cells[0]] = cells[-1]
    return found


def run(module: str, max_children: int) -> dict:
    work = prepare(module)
    mutmut = Path(sys.executable).with_name("mutmut")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    start = time.monotonic()
    done = subprocess.run([str(mutmut), "run", "--max-children", str(max_children)], cwd=work, env=env,
                          capture_output=True, text=True)
    seconds = time.monotonic() - start
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
        raise SystemExit(f"mutmut failed on {module} (exit code {done.returncode})")
    subprocess.run([str(mutmut), "export-cicd-stats"], cwd=work, env=env, check=True, capture_output=True)
    stats = json.loads((work / "mutants" / "mutmut-cicd-stats.json").read_text())
    results = subprocess.run([str(mutmut), "results"], cwd=work, env=env, capture_output=True, text=True).stdout
    survivors = sorted(re.findall(r"^\s*(\S+): survived$", results, re.M))
    known = equivalents()
    tried = stats["total"] - stats["skipped"] - stats["no_tests"]
    killed = stats["killed"] + stats["timeout"]
    summary = {
        "module": module, "seconds": round(seconds), "total": stats["total"], "tried": tried, "killed": killed,
        "survived": stats["survived"], "no_tests": stats["no_tests"], "timeout": stats["timeout"],
        "score": killed / tried if tried else float("nan"),
        "equivalent": [s for s in survivors if s in known],
        "to_kill": [s for s in survivors if s not in known],
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=f"some of: {' '.join(MODULES)} (default: all)")
    parser.add_argument("--list", action="store_true", help="print the modules and their test files")
    parser.add_argument("--max-children", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module {unknown[0]!r}: expected one of {', '.join(MODULES)}")
    if args.list:
        for module, tests in MODULES.items():
            print(f"ceexp/{module}.py: {' '.join(tests)}")
        return 0
    open_survivors = 0
    for module in args.modules or list(MODULES):
        s = run(module, args.max_children)
        print(f"ceexp/{module}.py: {s['score']:.1%} ({s['killed']} of {s['tried']} killed; {s['survived']} survived, "
              f"{len(s['equivalent'])} of them listed as equivalent; {s['no_tests']} reached by no test) "
              f"in {s['seconds']} s")
        for name in s["to_kill"]:
            print(f"    survived: {name}   (mutmut show {name}, in build/mutation/{module})")
        open_survivors += len(s["to_kill"])
    return 1 if open_survivors else 0


if __name__ == "__main__":
    sys.exit(main())
