"""Who may call: the EHR's signed JWT (CDS Hooks security), checked before any route.

Public API: `verifier.ClientAuthentication` (built by bootstrap.py from the settings; called with
method, path and Authorization header, it answers the client's `iss` or raises Unauthorized),
`jwks` (trusted clients' key sets, inline or from their `jku`), the replay caches (`replay` per
process, `shared_replay` in the shared database, `resilient_replay` that never fails a call when a
store cannot answer) and `trust` (what `cds-service keys` prints). Imports nothing of the web app.
"""
