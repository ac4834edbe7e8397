"""README names every plugin hook, every hook has a test, and README's links into docs/ hold.

Hooks are the functions of engine/hookspecs.py decorated with `@hookspec`; README's table
names each as `name(param, ...)`, and a `test_hook_<name>` function exercises it somewhere
under tests/. docs/plugins.md documents each in full (tests/test_plugin_docs.py)."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HOOKSPECS = ROOT / "engine" / "hookspecs.py"
README = ROOT / "README.md"
TESTS = ROOT / "tests"


def _is_hookspec(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(target, ast.Name) and target.id == "hookspec") or \
        (isinstance(target, ast.Attribute) and target.attr == "hookspec")


def hook_signatures() -> dict[str, str]:
    """Hook name -> "name(param, ...)" as the spec declares it."""
    tree = ast.parse(HOOKSPECS.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any(map(_is_hookspec, node.decorator_list)):
            a = node.args
            params = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
            out[node.name] = f"{node.name}({', '.join(params)})"
    return out


HOOKS = hook_signatures()


def test_hookspecs_are_found():
    assert "register_recallers" in HOOKS and "register_commands" in HOOKS, HOOKS


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_readme_names_every_hook(name):
    """README's plugin section lists every hook with its parameters (docs/plugins.md,
    tests/test_plugin_docs.py, documents each in full)."""
    assert f"`{HOOKS[name]}`" in README.read_text(encoding="utf-8"), HOOKS[name]


def test_readme_names_no_missing_hooks():
    documented = set(re.findall(r"`(register_\w+)\(", README.read_text(encoding="utf-8")))
    assert documented <= set(HOOKS), f"not in engine/hookspecs.py: {sorted(documented - set(HOOKS))}"


def test_plugin_hooks_have_tests():
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(TESTS.rglob("*.py")))
    missing = [name for name in sorted(HOOKS)
               if not re.search(rf"^\s*(?:async\s+)?def test_hook_{name}\b", text, flags=re.M)]
    assert not missing, "no test function named " + ", ".join(f"test_hook_{m}" for m in missing)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_links_to_docs_pages_and_their_headings():
    """README is the front page; the reference lives in docs/: every link from README into
    docs/ (and every in-page link) reaches a file and a heading that exist."""
    text = README.read_text()
    links = re.findall(r"\]\(((?:docs/[\w./-]+)?)(#[\w-]+)?\)", text)
    assert any(path for path, _ in links), "README links to its docs pages"
    for path, anchor in links:
        target = ROOT / path if path else README
        assert target.exists(), path
        if anchor:
            headings = [_anchor(h) for h in re.findall(r"^#+ (.+)$", target.read_text(), flags=re.M)]
            assert anchor[1:] in headings, f"{path or 'README.md'}{anchor}"
