"""The plugin manager: loads built-in and third-party plugins from the `shelfwise`
entry-point group alike, and collects the components they register."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .components import Component, DataSource, Encoder, Ranker, Recaller
from .errors import PluginError, UnknownComponentError

ENTRY_POINT_GROUP = "shelfwise"
KINDS: dict[str, tuple[str, type]] = {
    "sources": ("register_sources", DataSource),
    "encoders": ("register_encoders", Encoder),
    "recallers": ("register_recallers", Recaller),
    "rankers": ("register_rankers", Ranker),
}


@dataclass
class PluginFailure:
    name: str
    error: str


@dataclass
class PluginRegistry:
    pm: pluggy.PluginManager
    failures: list[PluginFailure] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    _components: dict[str, dict[str, tuple[str, type[Component]]]] | None = None

    def components(self) -> dict[str, dict[str, tuple[str, type[Component]]]]:
        """kind -> component name -> (plugin name, class), from the register_* hooks."""
        if self._components is None:
            self._components = {kind: {} for kind in KINDS}
            for kind, (hook_name, base) in KINDS.items():
                hook = getattr(self.pm.hook, hook_name)
                for impl in reversed(hook.get_hookimpls()):
                    found: list[Any] = []
                    impl.function(register=lambda *classes: found.extend(classes))
                    for cls in found:
                        if not (isinstance(cls, type) and issubclass(cls, base)) or not cls.name:
                            raise PluginError(
                                f"Plugin {impl.plugin_name!r} registered {cls!r} in {hook_name}; "
                                f"expected a subclass of engine.{base.__name__} with a name.")
                        if cls.name in self._components[kind]:
                            other = self._components[kind][cls.name][0]
                            raise PluginError(
                                f"Two plugins register a {kind[:-1]} named {cls.name!r}: "
                                f"{other!r} and {impl.plugin_name!r}. Block one with "
                                f"SHELFWISE_LOAD_PLUGINS.")
                        self._components[kind][cls.name] = (impl.plugin_name, cls)
        return self._components

    def component(self, kind: str, name: str) -> type[Component]:
        found = self.components()[kind]
        if name not in found:
            choices = ", ".join(sorted(found)) or "none"
            raise UnknownComponentError(
                f"Unknown {kind[:-1]} {name!r}. Installed {kind}: {choices}. "
                f"Run \"shelfwise plugins\".")
        return found[name][1]

    def plugins(self) -> list[dict[str, Any]]:
        """One entry per loaded plugin: name, version, hooks and registered components."""
        comps = self.components()
        out = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda np: np[0]):
            if plugin is None or name.startswith("_"):
                continue
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            registered = {kind: sorted(c for c, (p, _) in comps[kind].items() if p == name)
                          for kind in KINDS}
            out.append({"name": name, "version": self.versions.get(name),
                        "hooks": hooks, "components": {k: v for k, v in registered.items() if v}})
        return out


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"Plugin {name!r} does not match the hook contract: {exc}. "
                          f"See the hook signatures in README.md, \"Plugin hooks\".") from exc


def _wanted() -> set[str] | None:
    raw = os.environ.get("SHELFWISE_LOAD_PLUGINS")
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def load_plugins(plugins_dir: str | Path | None = None,
                 blocked: tuple[str, ...] = (), only: Iterable[str] | None = None) -> PluginRegistry:
    """Create a plugin manager with every plugin of the `shelfwise` entry-point group.

    SHELFWISE_LOAD_PLUGINS="a,b" loads only those (an empty value loads none); a name
    there that is not installed is an error. `only` does the same, overriding it (a Ray
    worker loads the plugins its driver loaded). A plugin that fails to import is reported
    (warning + `failures`) and the rest keep working. SHELFWISE_TRACE_PLUGINS=1 prints
    every hook call."""
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    registry = PluginRegistry(pm)
    for name in blocked:
        pm.set_blocked(name)
    wanted = set(only) if only is not None else _wanted()
    seen = set()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in seen:
            continue
        seen.add(ep.name)
        if (wanted is not None and ep.name not in wanted) or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party plugin must not break the engine
            message = f"{type(exc).__name__}: {exc}"
            registry.failures.append(PluginFailure(ep.name, message))
            warnings.warn(f"Shelfwise plugin {ep.name!r} failed to load: {message}", stacklevel=2)
            continue
        _register(pm, plugin, ep.name)
        if ep.dist is not None:
            registry.versions[ep.name] = ep.dist.version
    if plugins_dir:
        for path in sorted(Path(plugins_dir).glob("*.py")):
            spec = importlib.util.spec_from_file_location(f"shelfwise_local_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                registry.failures.append(PluginFailure(path.stem, f"{type(exc).__name__}: {exc}"))
                warnings.warn(f"Shelfwise plugin {str(path)!r} failed to load: {exc}", stacklevel=2)
                continue
            _register(pm, module, path.stem)
            seen.add(path.stem)
    if wanted is not None:
        missing = wanted - seen
        if missing:
            asked = "The plugins asked for name" if only is not None else "SHELFWISE_LOAD_PLUGINS names"
            raise PluginError(
                f"{asked} {', '.join(sorted(missing))}, which "
                f"{'is' if len(missing) == 1 else 'are'} not installed. Installed: "
                f"{', '.join(sorted(seen)) or 'none'}.")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"Plugin {exc.plugin!r} implements a hook Shelfwise does not have: {exc}. "
                          f"Known hooks: {', '.join(sorted(KNOWN_HOOKS))}.") from exc
    if os.environ.get("SHELFWISE_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda line: print(line, end="", file=sys.stderr))
        pm.enable_tracing()
    return registry


KNOWN_HOOKS = {name for name in dir(hookspecs) if name.startswith("register_")}
