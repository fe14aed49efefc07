"""Running the service: configuration, the HTTP server, logs, metrics and pseudonyms.

Public API: `config.Settings` / `config.load_settings` (the TOML file and CDS_* variables as
pydantic models), `server` (`cds-service serve`: granian, the default HTTP server, with
`rsgi_bridge` and `watchdog`), `front` and `workers` (`serve --server proxy`: granian's front
before gunicorn sync workers), `observability` (JSON logs, Prometheus metrics) and `privacy`
(keyed hashes: identifiers as they may appear in logs and the card store). Nothing clinical.
"""
