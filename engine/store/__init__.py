"""The store layer: every read and write of the shop's SQLite file (sqlite-utils), and the
only place SQL is written.

  core.Store          catalogue, users and events: imports, reads, what changed
  models.ModelStore   item vectors, full-text search, model artifacts, runs (part of Store)
  views.ViewQueries   the read-only questions of the views (part of Store)
  attribution         logged impressions, attributed events, the online report
  apikeys             the HTTP API's keys (hashed), and their lookup for the server
  rules.RuleStore     the merchandising rules (part of Store)
  replay_log          the logged impressions with their clicks, as offline replay reads them"""

from .core import CHUNK, ImportReport, Store, event_id_for, row_to_item

__all__ = ["CHUNK", "ImportReport", "Store", "event_id_for", "row_to_item"]
