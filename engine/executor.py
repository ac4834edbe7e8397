"""Where the batch work runs: in this process (`LocalExecutor`, the default) or on a Ray
cluster (`RayExecutor`: `pip install 'shelfwise[ray]'`, chosen with `[executor]` in
shelfwise.toml or `--executor ray` on train, evaluate and recommend --all).

Both offer one method, `map(fn, chunks, shared)`: `fn(chunk, value)` for each chunk, the
results in the order of the chunks. `shared` is what every chunk reads. A plain value is
handed over as it is (Ray puts it once in its object store). A `Shared` object says how:
`here()` is the value in this process (the local executor: today's objects, nothing
copied); `shipped()` is a `Portable` that travels to the workers once (`ray.put`) and is
opened once per worker process (`Portable.open`, kept while its `key` is the newest one).
Workers never read the shop's SQLite file (on a cluster they cannot see it): what they
need travels with `shipped()`. The caller, on the driver, stays the only writer.

Ray is imported only when a `RayExecutor` is made, so `import engine` stays light."""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence, runtime_checkable

from .errors import EngineError

INSTALL_HINT = "pip install 'shelfwise[ray]'"
# tasks submitted ahead of the one the caller waits for, per CPU of the cluster: enough to
# keep every worker busy, few enough that results do not pile up in the object store
AHEAD_PER_CPU = 2


@runtime_checkable
class Portable(Protocol):
    """What travels to a worker: `key` names it (a worker opens each key once)."""

    key: str

    def open(self) -> Any:
        """On a worker: the value the chunks' function reads."""


@runtime_checkable
class Shared(Protocol):
    def here(self) -> Any:
        """The value in this process (the local executor)."""

    def shipped(self) -> Portable:
        """What the workers receive, once each (the Ray executor)."""


class Executor(Protocol):
    kind: str      # "local" or "ray"
    workers: int   # how many chunks run at once

    def map(self, fn: Callable[[Any, Any], Any], chunks: Iterable[Any], shared: Any = None) -> Iterator[Any]:
        """`fn(chunk, shared value)` for each chunk; the results in the chunks' order."""

    def close(self) -> None:
        """Give back what the executor started (a local Ray instance)."""

    def describe(self) -> str:
        """Where the work runs, in a few words."""


class LocalExecutor:
    """Today's behaviour: every chunk in this process, one after the other."""

    kind = "local"
    workers = 1

    def map(self, fn: Callable[[Any, Any], Any], chunks: Iterable[Any], shared: Any = None) -> Iterator[Any]:
        value = shared.here() if isinstance(shared, Shared) else shared
        for chunk in chunks:
            yield fn(chunk, value)

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return "local (this process)"


def import_ray():
    """Ray, or a clear error saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise EngineError(f"The Ray executor (--executor ray, or kind = \"ray\" under [executor] in "
                          f"shelfwise.toml) needs Ray, which is not installed here: run "
                          f"\"{INSTALL_HINT}\" (on every machine of the cluster), or use "
                          f"--executor local.", title="Ray is not installed") from exc
    return ray


class RayExecutor:
    """Chunks as Ray tasks, on the Ray instance this process already joined, else on:
    `address` None or "local": a new local instance, of `num_cpus` CPUs (default: all);
    "auto": the cluster this machine belongs to (`ray start`); "ray://head:10001": a remote
    cluster through Ray Client."""

    kind = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        self.ray = ray = import_ray()
        self.address, self.started = address, False
        if not ray.is_initialized():
            # no address: an instance of the command's own ("local"), never Ray's guess at a
            # cluster `ray start` began here (one killed without `ray stop` hangs the command)
            options: dict[str, Any] = {"address": address or "local", "include_dashboard": False}
            if num_cpus is not None and options["address"] == "local":
                options["num_cpus"] = num_cpus
            try:
                ray.init(**options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise EngineError(f"Cannot reach the Ray cluster at {options['address']!r}: {exc}. "
                                  f"Start one (\"ray start --head\") or check --address / "
                                  f"[executor] address.", title="Ray cluster unreachable") from exc
            self.started = True
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._task = ray.remote(_run_chunk)

    def map(self, fn: Callable[[Any, Any], Any], chunks: Iterable[Any], shared: Any = None) -> Iterator[Any]:
        ray = self.ray
        if isinstance(shared, Shared):
            portable = shared.shipped()
            key, ref = portable.key, ray.put(portable)
        else:
            key, ref = None, ray.put(shared)
        pending: deque = deque()
        # the reference travels inside a list, so that Ray does not fetch it for every task:
        # a worker that already opened `key` never reads it again
        for chunk in chunks:
            pending.append(self._task.remote(fn, chunk, [ref], key))
            if len(pending) > AHEAD_PER_CPU * self.workers:
                yield self._get(pending.popleft())
        while pending:
            yield self._get(pending.popleft())

    def _get(self, ref: Any) -> Any:
        """A task's result; an error a worker raised for the user (EngineError) is raised
        here as itself, not wrapped in Ray's traceback."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, EngineError):
                raise exc.cause from None
            raise

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
        self.started = False

    def describe(self) -> str:
        where = self.address or "a local Ray instance"
        return f"ray ({where}, {self.workers} CPUs)"


# a worker's opened shared value: (key, value) of the newest key it was given
_opened: list[tuple[str, Any]] = []


def _run_chunk(fn: Callable[[Any, Any], Any], chunk: Any, boxed: list, key: str | None) -> Any:
    """The Ray task: the shared value (opened once per worker and key), then `fn`."""
    import ray

    if key is None:
        return fn(chunk, ray.get(boxed[0]))
    if not _opened or _opened[0][0] != key:
        _opened.clear()  # the previous job's value is dropped before the next is opened
        _opened.append((key, ray.get(boxed[0]).open()))
    return fn(chunk, _opened[0][1])


def make_executor(kind: str = "local", address: str | None = None,
                  num_cpus: int | None = None) -> LocalExecutor | RayExecutor:
    """The executor of that kind; `address` and `num_cpus` are Ray's."""
    if kind == "local":
        if address:
            raise EngineError(f"An address ({address!r}) is for the Ray executor: add "
                              f"--executor ray, or leave --address out.")
        return LocalExecutor()
    if kind == "ray":
        return RayExecutor(address, num_cpus)
    raise EngineError(f"Unknown executor {kind!r}. Choose local (this process) or ray "
                      f"({INSTALL_HINT}).")


def chunked(seq: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """`seq` in consecutive pieces of `size` (the last may be shorter)."""
    return [seq[start:start + size] for start in range(0, len(seq), max(1, size))]
