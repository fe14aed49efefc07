"""Reading FHIR R4 as EHRs send it: raw JSON, dates, prefetch, and the fallback FHIR client.

Public API: `read` (cheap look-ups on raw dicts, validation of what the rules use), `dates`
(FHIR dates as UTC datetimes), `nesting` (a depth limit checked before anything recursive),
`prefetch` (the four prefetch states of each key, `FetchStats`), `searches` (the searches the
rules need: discovery's prefetch templates and the fallback queries from one definition),
`client.FhirFetcher` (what prefetch lacks, within the call's deadline, only from the server the
EHR named) and `warmup`. Depends on the knowledge, never on CDS Hooks types or the web app.
"""
