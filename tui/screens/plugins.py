"""Plugins: what is loaded, which hooks each implements, its components, what failed."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Label, Static

from .. import format as fmt
from .base import EngineScreen


def _plugin_report(engine):
    return {**engine.plugins(), "components": engine.components()}


class PluginsScreen(EngineScreen):
    mode = "plugins"
    def compose(self) -> ComposeResult:
        yield self.header()
        with VerticalScroll(id="plugins-page"):
            yield Static("", id="failures")
            yield Label("Plugins", classes="section")
            yield DataTable(id="plugins", cursor_type="row", zebra_stripes=True)
            yield Label("Components", classes="section")
            yield DataTable(id="components", cursor_type="row", zebra_stripes=True)
        yield self.footer()

    def on_mount(self) -> None:
        self.sub_title = "Plugins"
        self.query_one("#plugins", DataTable).add_columns("plugin", "version", "hooks", "registers")
        self.query_one("#components", DataTable).add_columns(
            "kind", "name", "plugin", "trained (UTC)", "in pipeline", "description")
        self.fetch(_plugin_report, then=self.show, group="plugins")

    def show(self, info: dict) -> None:
        failures = self.query_one("#failures", Static)
        if info["failures"]:
            failures.update("\n".join(f"[b red]✗ {f['name']} failed to load:[/] {f['error']}"
                                      for f in info["failures"]))
        else:
            failures.update(f"All {len(info['plugins'])} plugins loaded.")
        plugins = self.query_one("#plugins", DataTable)
        plugins.clear()
        for p in info["plugins"]:
            comps = "; ".join(f"{k[:-1]} {', '.join(v)}" for k, v in p["components"].items() if v)
            hooks = ", ".join(h.removeprefix("register_") for h in p["hooks"])
            plugins.add_row(p["name"], p["version"] or "", hooks, comps)
        comps = self.query_one("#components", DataTable)
        comps.clear()
        for kind, found in info["components"].items():
            for c in found:
                trained = fmt.when(c["trained_at"]) if c["trained"] else ("not trained" if kind in (
                    "recallers", "rankers") else "")
                default = {True: "yes", False: "no", None: ""}[c["default"]]
                comps.add_row(kind[:-1], c["name"], c["plugin"], trained, default, c["description"])
