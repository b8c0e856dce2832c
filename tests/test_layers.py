"""The packages import downward only: kernels -> attention_zoo -> data_prep -> lra.

A module may import its own package and the packages below it, never one above: `kernels` stands
alone, the zoo uses only the kernels, the data preparation needs no model and no trainer.
Entry points (`__main__.py`, run by `python -m <package>` and imported by nothing) sit above every
library module, so they may end through `lra.cli` like every other command.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["kernels", "attention_zoo", "data_prep", "lra"]


def imported_packages(path: Path) -> set[str]:
    """Our top-level packages that a module imports, lazily inside functions included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(LAYERS)


def modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if p.name != "__main__.py")


@pytest.mark.parametrize("package", LAYERS)
def test_no_module_imports_a_higher_package(package):
    allowed = set(LAYERS[: LAYERS.index(package) + 1])
    upward = {str(p.relative_to(ROOT)): sorted(imported_packages(p) - allowed)
              for p in modules(package)}
    assert {k: v for k, v in upward.items() if v} == {}


def test_the_walk_sees_lazy_and_dotted_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    import lra.train\n    from data_prep.cache import X\n"
                     "from . import sibling\nimport numpy\n")
    assert imported_packages(probe) == {"lra", "data_prep"}
