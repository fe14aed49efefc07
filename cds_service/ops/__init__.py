"""Running the service: configuration, the HTTP server, logs, metrics and pseudonyms.

Public API: `config.Settings` / `config.load_settings` (the TOML file and CDS_* variables as
pydantic models), `server` (`cds-service serve`: the production HTTP server and its workers),
`observability` (JSON logs, Prometheus metrics), `privacy` (keyed hashes: identifiers as they may
appear in logs and the card store). Nothing clinical here.
"""
