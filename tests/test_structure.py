"""The shape the code keeps: short functions with few parameters, modules of one
responsibility, only the command line speaking to the user in `Error:` lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mnist_seq"
MAX_FUNCTION_LINES, MAX_PARAMETERS, MAX_MODULE_LINES = 60, 8, 400


def functions():
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield path, node


def test_functions_are_short():
    long = [f"{p.name}:{f.name} ({f.end_lineno - f.lineno + 1} lines)" for p, f in functions()
            if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


def test_functions_take_few_parameters_but_click_commands():
    def count(f: ast.FunctionDef) -> int:
        a = f.args
        return len(a.posonlyargs + a.args + a.kwonlyargs) - (a.args[:1] != [] and
                                                              a.args[0].arg in ("self", "cls"))

    many = [f"{p.name}:{f.name} ({count(f)})" for p, f in functions()
            if count(f) > MAX_PARAMETERS and p.name != "cli.py"]
    assert not many, many


def test_modules_are_small():
    big = [f"{p.name} ({n})" for p in PACKAGE.glob("*.py")
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    assert not big, big


def test_only_the_command_line_writes_error_lines():
    def says_error(node: ast.AST) -> bool:
        first = node.values[0] if isinstance(node, ast.JoinedStr) and node.values else node
        return (isinstance(first, ast.Constant) and isinstance(first.value, str)
                and first.value.startswith("Error: "))

    writers = [f"{p.name}:{n.lineno}" for p in PACKAGE.glob("*.py") if p.name != "cli.py"
               for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
               if isinstance(n, ast.Call) and any(says_error(a) for a in n.args)]
    assert not writers, writers


def test_training_never_asks_whether_there_is_a_cluster():
    source = (PACKAGE / "train.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    asked = [ast.unparse(n) for n in ast.walk(tree)
             if isinstance(n, ast.Compare) and any(
                 isinstance(c, ast.Constant) and c.value is None for c in n.comparators)
             and "cluster" in ast.unparse(n)]
    truthy = [ast.unparse(n.test) for n in ast.walk(tree)
              if isinstance(n, ast.If | ast.IfExp) and ast.unparse(n.test).strip("not ()")
              .endswith("cluster")]
    assert not asked + truthy, asked + truthy
