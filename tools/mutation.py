"""`make mutation`: a mutmut run over the core modules, and its report.

    python tools/mutation.py [--mutate lra/model.py ...] [--tests tests/test_model.py ...]
                             [-k "pytest -k expression"] [--out results/mutation/report.md]
                             [--jobs 1] [--recheck]

mutmut (the optional `mutation` extra) changes one operator, constant or call at a time in the
modules given, runs the tests that reach the changed function, and calls the mutant killed when
one fails. A surviving mutant is a behaviour change no test notices: kill it with a test, or
justify it as equivalent (results/mutation/README.md). The run happens in a scratch copy of the
checkout (build/mutation/), so the checkout itself is never mutated. After writing tests that
kill survivors, `--recheck` (same --work and --out) copies the checkout's tests/ into the scratch
copy and reruns only the mutants not killed; the selection must not change (a new test must sit
in a file it already names), or mutmut discards every result. Slow: each mutant reruns its
tests (the whole core is hours on 2 cores; one module with its own tests, minutes).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ["attention_zoo/*", "lra/train.py", "lra/model.py", "lra/data.py", "lra/sampling.py",
        "lra/distributed.py", "data_prep/cache.py"]
PACKAGES = ["attention_zoo", "lra", "data_prep", "kernels"]


def scratch_copy(work: Path) -> None:
    """The checkout's files (tracked, and untracked but not ignored) copied to `work`."""
    if work.exists():
        shutil.rmtree(work)
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, names):
        if (ROOT / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, work / name)


def configure(work: Path, mutate: list[str], tests: list[str]) -> None:
    """Append mutmut's settings to the copy's pyproject.toml (JSON lists are TOML arrays)."""
    # mutmut runs the tests in mutants/, which holds only the packages and also_copy: the configs,
    # the published figures that lra/results.py reads beside the runs, and the tools that tests
    # run (tools/protocol_effects.py).
    settings = {"source_paths": PACKAGES, "only_mutate": mutate,
                "also_copy": ["conf", "results/published", "tools"],
                "pytest_add_cli_args_test_selection": tests}
    lines = ["", "[tool.mutmut]", *(f"{k} = {json.dumps(v)}" for k, v in settings.items())]
    with open(work / "pyproject.toml", "a") as f:
        f.write("\n".join(lines) + "\n")


def mutmut(work: Path, *args: str, check: bool = True) -> str:
    exe = Path(sys.executable).with_name("mutmut")
    proc = subprocess.run([str(exe), *args], cwd=work, capture_output=True, text=True)
    if check and proc.returncode != 0:
        sys.exit(f"mutmut {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def module_of(mutant: str) -> str:
    """'lra.model.x_forward__mutmut_3' -> 'lra/model.py' (class methods: 'xǁClassǁname')."""
    dotted = mutant.split("__mutmut_")[0].rsplit(".", 1)[0]
    return dotted.replace(".", "/") + ".py"


def statuses_of(work: Path) -> dict[str, str]:
    statuses = {}
    for line in mutmut(work, "results", "--all", "true").splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep:
            statuses[name] = status
    return statuses


def not_killed(statuses: dict[str, str]) -> list[str]:
    return sorted(n for n, s in statuses.items() if s not in ("killed", "timeout"))


def report(work: Path, command: str) -> str:
    statuses = statuses_of(work)
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for name, status in statuses.items():
        counts[module_of(name)][status] += 1
    kinds = sorted({s for c in counts.values() for s in c})
    out = [f"# Mutation run\n\nCommand: `{command}`\n",
           "| module | mutants | " + " | ".join(kinds) + " | kill rate |",
           "|---|---|" + "---|" * len(kinds) + "---|"]
    for module, c in sorted(counts.items()):
        total = sum(c.values())
        killed = c["killed"] + c["timeout"]
        out.append(f"| {module} | {total} | " + " | ".join(str(c[k]) for k in kinds)
                   + f" | {killed / total:.1%} |")
    survivors = not_killed(statuses)
    out.append(f"\n## Not killed ({len(survivors)})\n")
    for name in survivors:
        out.append("```diff\n" + mutmut(work, "show", name, check=False).strip() + "\n```\n")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/mutation.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mutate", nargs="+", default=CORE, help="files or globs to mutate")
    parser.add_argument("--tests", nargs="+", default=["tests"], help="pytest selection")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression narrowing --tests")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "mutation" / "report.md")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "mutation")
    parser.add_argument("--recheck", action="store_true",
                        help="rerun only the mutants not killed in --work, with today's tests/")
    args = parser.parse_args(argv)
    if shutil.which("mutmut", path=str(Path(sys.executable).parent)) is None:
        sys.exit("error: mutmut is not installed; run: pip install -e '.[mutation]'")
    command = "python tools/mutation.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    first = args.work / "mutation-command.txt"
    mutants: list[str] = []
    if args.recheck:
        shutil.copytree(ROOT / "tests", args.work / "tests", dirs_exist_ok=True)
        mutants = not_killed(statuses_of(args.work))
        command = f"{first.read_text().strip()}`, then `{command.strip()}"
    else:
        scratch_copy(args.work)
        tests = args.tests + (["-k", args.keyword] if args.keyword else [])
        configure(args.work, args.mutate, tests)
        first.write_text(command)
    # mutmut forks a child per mutant: a fork taken while torch's intra-op thread pool exists
    # can hang on a futex the pool held (seen on 2 cores without taskset), so one thread.
    subprocess.run([str(Path(sys.executable).with_name("mutmut")), "run", "--max-children",
                    str(args.jobs), *mutants], cwd=args.work, check=False,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(args.work, command.strip()))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
