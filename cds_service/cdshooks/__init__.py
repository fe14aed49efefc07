"""The CDS Hooks protocol around the clinical core: requests in, cards out, feedback.

Public API: `engine.HookEngine` (one hook call end to end: request -> patient data -> record ->
assessment -> cards; used by the web app, the CLI and the tests alike), `services.SERVICES`
(what discovery lists), `request.parse_request` and the pydantic models of the request (`wire`)
and of the feedback body (`feedback`), and `acknowledgements` (what a clinician already answered
for a patient, for override quieting). No Flask here: the web layer calls in.
"""
