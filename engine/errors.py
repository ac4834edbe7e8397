"""Errors raised for users. Every message says what failed, why, and what to do next."""

from __future__ import annotations


class EngineError(Exception):
    """Base class for every error a user of Shelfwise can act on."""

    title = "Shelfwise error"

    def __init__(self, message: str, title: str | None = None):
        super().__init__(message)
        self.message = message
        if title is not None:
            self.title = title

    def __str__(self) -> str:
        return self.message


class ImportDataError(EngineError):
    """Bad input in an import: names the file, the line and the field at fault."""

    title = "Import failed"

    def __init__(self, location: str, line: int | None, field: str | None, problem: str):
        self.location = location
        self.line = line
        self.field = field
        self.problem = problem
        where = location if line is None else f"{location} line {line}"
        what = f"{field}: {problem}" if field else problem
        super().__init__(f"{where}: {what}")


class PluginError(EngineError):
    title = "Plugin error"


class UnknownComponentError(EngineError):
    title = "Unknown component"


class NotTrainedError(EngineError):
    title = "Not trained"


class ArtifactError(EngineError):
    title = "Model artifact error"


class ConfigError(EngineError):
    title = "Configuration error"
