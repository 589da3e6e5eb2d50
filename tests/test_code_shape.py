"""The shape of the code (issue 14): no module of rsjax/ over 650 lines, and no function over 80
lines unless a comment right above it (or above its decorators) says why a longer one reads
better. Reads the sources only (ast), imports nothing."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "rsjax"
MAX_MODULE_LINES = 650
MAX_FUNCTION_LINES = 80


def long_functions(path: Path) -> list[tuple[str, int, bool]]:
    """(name, lines, has a reason comment right above) of every function over the limit."""
    lines = path.read_text().splitlines()
    out = []
    for node in ast.walk(ast.parse("\n".join(lines), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                out.append((node.name, length, first >= 2 and lines[first - 2].lstrip().startswith("#")))
    return out


def test_modules_and_functions_stay_short():
    problems = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent)
        n = len(path.read_text().splitlines())
        if n > MAX_MODULE_LINES:
            problems.append(f"{rel}: {n} lines (> {MAX_MODULE_LINES}): split it")
        problems += [f"{rel}: {name}() is {length} lines (> {MAX_FUNCTION_LINES}) with no one-line reason "
                     f"in a comment right above it" for name, length, reason in long_functions(path) if not reason]
    assert not problems, "\n".join(problems)


def test_the_check_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "a.py").write_text(f"def f():\n{body}\n\n\n# reads as one piece\ndef g():\n{body}\n")
    assert long_functions(tmp_path / "a.py") == [("f", MAX_FUNCTION_LINES + 1, False),
                                                 ("g", MAX_FUNCTION_LINES + 1, True)]
