"""The benchmark, the demo and the test bed run outside pytest: none imports the tests."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_bench_demo_and_testbed_do_not_import_the_tests_package():
    sources = [*ROOT.glob("bench/*.py"), *ROOT.glob("testbed/*.py"), ROOT / "scripts" / "demo.py"]
    assert len(sources) > 5
    offenders = {
        str(path.relative_to(ROOT)): sorted(name for name in _imported_modules(path)
                                            if name == "tests" or name.startswith("tests."))
        for path in sources
    }
    assert {path: names for path, names in offenders.items() if names} == {}
