"""The OML4Py-compatible REST API (DRF). It parses, checks and calls services; no logic lives here."""
