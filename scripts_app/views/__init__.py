"""The pages of the web UI: server-rendered, improved by htmx, each one permission-checked."""
