"""The README documents every plugin hook, and every hook has a test.

Hooks are the functions of engine/hookspecs.py decorated with `@hookspec`; each needs a
`### name(param, ...)` heading in README.md's "## Plugin hooks" section with the same
parameter names, and a `test_hook_<name>` function somewhere under tests/."""

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


def section(markdown: str, title: str) -> str:
    """The text under `## title`, up to the next heading of level 1 or 2, code blocks
    left out (a "# comment" line in a shell example is not a heading)."""
    prose = re.sub(r"^(```|~~~).*?^\1[ \t]*$", "", markdown, flags=re.M | re.S)
    match = re.search(rf"^## {re.escape(title)}[ \t]*\n(.*?)(?=^#{{1,2}} |\Z)", prose,
                      flags=re.M | re.S)
    return match.group(1) if match else ""


HOOKS = hook_signatures()


def test_hookspecs_are_found():
    assert "register_recallers" in HOOKS and "register_commands" in HOOKS, HOOKS


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_readme_documents_hook(name):
    assert README.is_file(), "README.md is missing"
    hooks = section(README.read_text(encoding="utf-8"), "Plugin hooks")
    assert hooks, 'README.md has no "## Plugin hooks" section'
    headings = re.findall(r"^### (\S.*?)\s*$", hooks, flags=re.M)
    assert f"{HOOKS[name]}" in headings, (
        f'README.md "## Plugin hooks" needs a heading "### {HOOKS[name]}"; '
        f"found: {headings}")


def test_readme_documents_no_missing_hooks():
    """Every `### register_...(...)` heading under Plugin hooks names a real hook."""
    if not README.is_file():
        pytest.skip("README.md is missing (test_readme_documents_hook says so)")
    hooks = section(README.read_text(encoding="utf-8"), "Plugin hooks")
    documented = re.findall(r"^### (\w+)\(", hooks, flags=re.M)
    assert not set(documented) - set(HOOKS), f"documented but not in engine/hookspecs.py: " \
        f"{sorted(set(documented) - set(HOOKS))}"


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
