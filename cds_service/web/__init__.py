"""HTTP: the Flask app and what it serves besides the hooks.

Public API: `app.build_app` (from the `WebParts` that bootstrap.py wires), `state.CallState`
(what one call carries, typed), `body` (strict JSON bodies), `header_limits` (431 as JSON),
`health` (health, readiness, metrics, call timing), `openapi` (GET /openapi.json from the
request and feedback models) and `rules` / `rules_page` (GET /rules, the page every card links).
Nothing outside `web` and bootstrap.py imports it.
"""
