"""Which components make up the pipeline: the recallers and their quotas (shelfwise.toml,
else each plugin's default), the ranker that serves (named, else the trained one of the
highest priority whose model loads), and the serving `Pipeline` built from them."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Sequence

from .components import Component, Ranker, Recaller
from .config import Settings
from .errors import NotTrainedError
from .pipeline import Pipeline
from .plugins import PluginRegistry
from .serving import Serving

if TYPE_CHECKING:  # pragma: no cover
    from .vectors import VectorIndex


class Lineup:
    def __init__(self, registry: PluginRegistry, settings: Settings, serving: Serving,
                 make: Callable[[str, str], Component], vectors: Callable[[], VectorIndex | None] = lambda: None):
        self.registry, self.settings, self.serving, self._make = registry, settings, serving, make
        self._vectors = vectors  # the current vector index (the diversity re-rank's similarities)

    def described(self, active_models: list[dict]) -> dict[str, list[dict]]:
        return describe_components(self.registry, active_models)

    def quotas(self, names: Sequence[str] | None = None) -> dict[str, int]:
        """Recallers and their quotas: `names` (each checked to be installed), else the
        pipeline's."""
        installed = self.registry.components()["recallers"]
        configured = self.settings.pipeline.recallers
        if names:
            classes = {name: self.registry.component("recallers", name) for name in names}
            return {name: (configured or {}).get(name) or cls.default_quota or 100
                    for name, cls in classes.items()}
        if configured is not None:
            for name in configured:
                self.registry.component("recallers", name)
            return dict(configured)
        return {name: cls.default_quota for name, (_, cls) in installed.items() if cls.default_quota > 0}

    def ranker_name(self, override: str | None = None, fitted_only: bool = True) -> str | None:
        if override:
            self.registry.component("rankers", override)
            return override
        if self.settings.pipeline.ranker:
            return self.settings.pipeline.ranker
        rankers = sorted(self.registry.components()["rankers"].items(), key=lambda kv: -kv[1][1].priority)
        for name, _ in rankers:
            if not fitted_only or self.serving.fitted("rankers", name) is not None:
                return name  # a damaged model is skipped (`fitted`): the next one serves
        return None

    def rules(self) -> dict:
        """The re-rank settings of a Pipeline: diversity (with the vector index it reads the
        item vectors from: kept current by catalogue edits and `train`, no SQL per request)
        and the new-arrival slots."""
        ps = self.settings.pipeline
        return {"diversity": ps.diversity, "vectors": self._vectors() if ps.diversity > 0 else None,
                "new_slots": ps.new_item_slots, "new_position": ps.new_item_position}

    def pipeline(self, recallers: Sequence[str] | None = None, ranker: str | None = None) -> Pipeline:
        """The serving pipeline, from trained components only (as loaded: `Serving.sync`
        first to notice new ones). `ranker=""`: none."""
        serving = self.serving
        quotas = self.quotas(recallers)
        fitted: dict[str, Recaller] = {}
        for name in quotas:
            r = serving.fitted("recallers", name)
            if r is not None:
                fitted[name] = r
            elif recallers:
                serving.refuse_broken(f"recaller/{name}")
                raise NotTrainedError(self._recaller_not_serving(name))
        if not fitted:
            raise NotTrainedError("No trained recallers in this database. Import data, then run "
                                  "\"shelfwise train\" (or \"shelfwise demo\" for the demo shop).")
        ranker_name = self.ranker_name(ranker) if ranker != "" else None
        ranker_obj = None
        if ranker_name is not None:
            ranker_obj = serving.fitted("rankers", ranker_name)
            if ranker_obj is None and ranker:
                serving.refuse_broken(f"ranker/{ranker_name}")
                raise NotTrainedError(self._not_serving(ranker_name))
        view = serving.catalogue()
        return Pipeline(fitted, {k: v for k, v in quotas.items() if k in fitted}, ranker_obj,
                        available=view.available, categories=view.categories,
                        new_items=view.untouched, failed=serving.failing, **self.rules())

    def only(self, pipe: Pipeline, which: Callable[[Recaller], bool]) -> Pipeline:
        """The pipeline with only the recallers `which` accepts, and no ranker."""
        return replace(pipe, recallers={k: r for k, r in pipe.recallers.items() if which(r)}, ranker=None)

    def _recaller_not_serving(self, name: str) -> str:
        """Why a recaller asked for by name has no active model: never trained, or on trial
        and left out by the last `train`."""
        store = self.serving.store
        if store.latest_artifact(f"recaller/{name}") is None:
            return f"Recaller {name!r} has not been trained. Run \"shelfwise train\"."
        runs = [r for r in store.runs("train", 5) if r["status"] == "ok"]
        verdict = (runs[0]["metrics"].get("trials") or {}).get(name) if runs else None
        why = (f" (validation NDCG@10 of the candidates {verdict['ndcg@10_with']:.4f} with it, "
               f"{verdict['ndcg@10_without']:.4f} without)") if verdict else ""
        return (f"Recaller {name!r} was trained but did not join the pipeline: the candidates "
                f"were not better with it{why}. To use it anyway, name it under [pipeline] "
                f"recallers in shelfwise.toml and run \"shelfwise train\".")

    def _not_serving(self, ranker: str) -> str:
        """Why a ranker asked for by name has no active model, and what to do about it."""
        store = self.serving.store
        stored = store.latest_artifact(f"ranker/{ranker}")
        if stored is None:
            return f"Ranker {ranker!r} has not been trained. Run \"shelfwise train\"."
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(stored["created_at"]))
        runs = [r for r in store.runs("train", 5) if r["status"] == "ok"]
        why = ((runs[0]["metrics"].get("ranker") or {}).get("why") if runs else "") or \
            "another ranker was chosen"
        return (f"Ranker {ranker!r} was trained ({when}) but is not serving: {why}. To serve it "
                f"anyway, put ranker = \"{ranker}\" under [pipeline] in shelfwise.toml and run "
                f"\"shelfwise train\" (a ranker named there is activated whatever the check says).")

    def fresh(self, recallers: Sequence[str] | None = None, ranker: str | None = None,
              every: bool = False) -> tuple[dict[str, int], dict[str, Recaller], list[Ranker]]:
        """Unfitted components: (quotas, the pipeline's recallers — with `every`, all
        installed ones too —, rankers: the chosen one, or with `every` all installed)."""
        quotas = self.quotas(recallers)
        names = list(quotas)
        if every:
            names += [n for n in self.registry.components()["recallers"] if n not in quotas]
        fresh = {name: self._make("recallers", name) for name in names}
        if every and not ranker:
            rankers = [self._make("rankers", n) for n in self.registry.components()["rankers"]]
        else:
            # the ranker that serves now (train keeps a ranker that lost inactive), else the
            # installed one of highest priority
            name = self.ranker_name(ranker) or self.ranker_name(ranker, fitted_only=False)
            rankers = [self._make("rankers", name)] if name else []
        return quotas, fresh, rankers


def describe_components(registry: PluginRegistry, active_models: Sequence[dict] = ()) -> dict[str, list[dict]]:
    """Every installed component by kind: its plugin and description, whether (and when)
    it was trained (`active_models`: the store's active artifacts), and whether it is in
    the pipeline by default."""
    out: dict[str, list[dict]] = {}
    active = {a["name"]: a for a in active_models}
    for kind, found in registry.components().items():
        out[kind] = []
        for name, (plugin, cls) in sorted(found.items()):
            art = active.get(f"{kind[:-1]}/{name}")
            out[kind].append({
                "name": name, "plugin": plugin, "description": cls.description,
                "trained": art is not None, "trained_at": art["created_at"] if art else None,
                "default": (getattr(cls, "default_quota", 0) > 0) if kind == "recallers" else None,
            })
    return out
