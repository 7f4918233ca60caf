"""Mutation testing (mutmut 3) of the modules that compute what users publish, each against its own fast tests.

    python tests/mutation.py                      # every module below (make mutation)
    python tests/mutation.py files losses         # some of them
    python tests/mutation.py --list               # the modules and their test files
    python tests/mutation.py losses --only 'ceexp.losses.x_sample_dependent_focal_loss*'   # some functions

Each module runs in its own workspace ``build/mutation/<module>/`` (a copy of ``ceexp/``, ``configs/``, ``scripts/`` and
``tests/`` with a ``pyproject.toml`` naming that module and its test files), so a mutant runs only the tests of
its module that reach the mutated function: seconds, not minutes. mutmut never edits the working tree (it
mutates a copy under ``<workspace>/mutants/``) and keeps its results there, so a second run only tries what
changed. Each module ends with its score (killed / tried) and the survivors not listed in
``tests/mutation_equivalents.md`` (equivalent mutants, each with its reason): those need a test.

Not part of the fast suite or CI: on a busy 2-core machine files.py (168 mutants) took 22 minutes the first time
and 3 minutes to try its survivors again; mutants that no change touched keep their verdicts between runs.
``--only`` narrows a run to some functions (mutmut's names: ``ceexp.<module>.x_<function>__mutmut_<n>``, methods
``ceexp.<module>.xǁ<Class>ǁ<method>__mutmut_<n>``).
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
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent

# module -> the fast test files that cover it (the per-module selection; the slow and promise tests never run)
MODULES: dict[str, list[str]] = {
    "files": ["tests/test_files.py", "tests/test_atomic_files.py"],
    "losses": ["tests/test_losses.py", "tests/test_loss_zoo.py", "tests/test_loss_updates.py",
               "tests/test_thresholds.py", *(f"tests/test_binary_heads.py::test_{name}" for name in (
                   "sigmoid_focal_values", "gamma_0_without_alpha_is_bce_and_bce_is_two_class_cross_entropy",
                   "pos_weight_and_ignore_index", "gradient_of_sigmoid_focal_matches_finite_differences",
                   "saturated_logits_stay_finite", "bad_inputs_are_refused",
                   "balanced_pos_weight_is_negatives_over_positives"))],
    # (not the end-to-end digits test of every calibrator, 30 s a mutant; the unit tests check each calibrator)
    "calibration": ["tests/test_calibration.py", "tests/test_calibrators.py", "tests/test_thresholds.py", "--deselect",
                    "tests/test_calibrators.py::test_digits_logistic_regression_ece_falls_on_held_out_data"],
    "metrics": ["tests/test_metrics.py", "tests/test_selective.py", "tests/test_metric_fixtures.py",
                "tests/test_thresholds.py"],
    "stats": ["tests/test_stats.py"],
    # runs.py: its own tests and the failure-policy tests of test_faults.py (not its training runs)
    "runs": ["tests/test_runs.py", *(f"tests/test_faults.py::test_{name}" for name in (
        "policy_config_error_single_run_leaves_nothing",
        "policy_in_a_sweep_every_failure_is_recorded_and_the_sweep_goes_on",
        "policy_single_run_messages_and_exit_codes",
        "policy_full_disk_names_the_first_file_and_keeps_the_last_record",
        "policy_keeps_the_record_train_wrote_for_the_same_failure",
        "hydra_own_failures_are_one_line"))],
}
EQUIVALENTS = ROOT / "tests" / "mutation_equivalents.md"
# appended to the workspace's tests/conftest.py: mutmut's fork server collects the tests once and forks a process per
# mutant, so what the package imports inside its functions (pandas, scipy.stats, Lightning, PIL, ...) is imported
# once here, not once per mutant (3.5 s a mutant in stats.py before this)
_WARM = ["ceexp." + m for m in (
    "augment", "bootstrap", "calibration", "callbacks", "checks", "compare", "download", "files", "losses", "metrics",
    "models", "module", "ood", "plots", "robustness", "runs", "shift", "stats", "tensorboard", "train", "validation",
    "data", "data.formats")] + [
    "pandas", "yaml", "scipy.stats", "scipy.optimize", "scipy.io", "sklearn.metrics", "sklearn.isotonic",
    "sklearn.datasets", "sklearn.model_selection", "sklearn.utils.class_weight", "statsmodels.stats.multitest",
    "PIL.Image", "PIL.ImageDraw", "PIL.ImageFont", "matplotlib.pyplot", "pytorch_lightning",
    "pytorch_lightning.loggers", "torchmetrics", "tensorboard.plugins.hparams.api",
    "tensorboard.backend.event_processing.event_accumulator", "hydra.utils", "hydra.core.override_parser.overrides_parser"]
WARM_IMPORTS = ("\n\n# added by tests/mutation.py (see there)\nimport importlib as _importlib\n\nfor _name in "
                + repr(_WARM) + ":\n    try:\n        _importlib.import_module(_name)\n    except ImportError:\n"
                "        pass\n")


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
    for name in ("ceexp", "configs", "scripts", "tests"):
        shutil.rmtree(work / name, ignore_errors=True)
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    with open(work / "tests" / "conftest.py", "a") as f:  # mutmut's fork server collects the tests: import here
        f.write(WARM_IMPORTS)
    pytest_ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    mutmut = {
        "source_paths": ["ceexp"],
        "only_mutate": [f"ceexp/{module}.py"],
        "also_copy": ["configs", "scripts"],
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


def _results(mutmut: Path, work: Path, env: dict) -> dict[str, str]:
    """``{mutant name: status}`` of every mutant mutmut knows in ``work`` (``{}`` before the first run)."""
    if not (work / "mutants").is_dir():
        return {}
    out = subprocess.run([str(mutmut), "results", "--all", "true"], cwd=work, env=env, capture_output=True,
                         text=True, check=False).stdout
    return dict(re.findall(r"^\s*(\S+): (.+?)\s*$", out, re.MULTILINE))


def _tests_digest(module: str) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name in ["tests/conftest.py", *sorted({t.split("::")[0] for t in MODULES[module] if t.startswith("tests/")})]:
        digest.update(name.encode() + b"\0" + (ROOT / name).read_bytes())
    return digest.hexdigest()


def run(module: str, max_children: int, patterns: list[str]) -> dict:
    """Run mutmut on ``module`` (only the mutants matching ``patterns``, e.g. ``ceexp.losses.x_focal_loss*``, when
    given); return the summary, also written to ``build/mutation/<module>/summary.json``."""
    mutmut = Path(sys.executable).with_name("mutmut")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    work = ROOT / "build" / "mutation" / module
    before = _results(mutmut, work, env)
    work = prepare(module)
    # mutmut maps tests to functions once and keeps its verdicts: when the tests changed, map again, and try the
    # earlier survivors again (a new test may kill them)
    digest, stamp = _tests_digest(module), work / "tests.sha256"
    if not stamp.exists() or stamp.read_text() != digest:
        (work / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    start = time.monotonic()
    with open(work / "mutmut.log", "w") as log:  # mutmut's progress, as it goes
        # (a mutant that no test reached may be reached by a new one)
        for names in (patterns, [n for n, status in before.items() if status in ("survived", "no tests")]):
            if names is not patterns and not names:
                continue
            done = subprocess.run([str(mutmut), "run", "--max-children", str(max_children), *names], cwd=work,
                                  env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
            if done.returncode != 0:
                print((work / "mutmut.log").read_text()[-3000:])
                raise SystemExit(f"mutmut failed on {module} (exit code {done.returncode}; "
                                 f"build/mutation/{module}/mutmut.log)")
    stamp.write_text(digest)
    seconds = time.monotonic() - start
    statuses = _results(mutmut, work, env)
    if patterns:
        import fnmatch

        statuses = {n: s for n, s in statuses.items() if any(fnmatch.fnmatch(n, p) for p in patterns)}
    counts = {s: list(statuses.values()).count(s) for s in set(statuses.values())}
    survivors = sorted(n for n, s in statuses.items() if s in ("survived", "no tests"))
    known = equivalents()
    # a mutant whose tests time out or crash the test process is caught as well
    killed = sum(counts.get(k, 0) for k in ("killed", "timeout", "segfault", "caught by type check"))
    # a mutant that no test reaches is not killed: it counts against the score like a survivor
    tried = killed + counts.get("survived", 0) + counts.get("suspicious", 0) + counts.get("no tests", 0)
    summary = {
        "module": module, "patterns": patterns, "seconds": round(seconds), "total": len(statuses), "tried": tried,
        "killed": killed, "survived": counts.get("survived", 0), "no_tests": counts.get("no tests", 0),
        "not_checked": counts.get("not checked", 0), "statuses": counts,
        "score": killed / tried if tried else float("nan"),
        # the measure: killed among the mutants not listed as equivalent
        "score_non_equivalent": (killed / (tried - sum(s in known for s in survivors))
                                 if tried > sum(s in known for s in survivors) else float("nan")),
        "equivalent": [s for s in survivors if s in known],
        "to_kill": [s for s in survivors if s not in known],
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=f"some of: {' '.join(MODULES)} (default: all)")
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN",
                        help="only the mutants whose names match (mutmut's names, e.g. 'ceexp.losses.x_focal_loss*'); "
                             "repeatable")
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
        patterns = [p for p in args.only if p.startswith(f"ceexp.{module}.")]
        if args.only and not patterns:
            continue
        s = run(module, args.max_children, patterns)
        scope = f" (mutants {' '.join(patterns)})" if patterns else ""
        print(f"ceexp/{module}.py{scope}: {s['score_non_equivalent']:.1%} of the non-equivalent mutants killed "
              f"({s['killed']} of {s['tried'] - len(s['equivalent'])}; {s['tried']} tried, {s['survived']} survived, "
              f"{s['no_tests']} reached by no test, {len(s['equivalent'])} of those listed as equivalent; "
              f"{s['not_checked']} not checked) in {s['seconds']} s")
        for name in s["to_kill"]:
            print(f"    survived: {name}   (mutmut show {name}, in build/mutation/{module})")
        open_survivors += len(s["to_kill"])
    return 1 if open_survivors else 0


if __name__ == "__main__":
    sys.exit(main())
