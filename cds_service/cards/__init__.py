"""What the clinician reads: cards written from an assessment, with words from `cards.toml`.

Public API: `writer.CardWriter` (assessment -> `IssuedCard`s for patient-view and the order hooks),
`writer.CardTemplates` (cards.toml, package data, loaded and compiled once), `writer.rules_anchor`
and `writer.absolute_service_urls` (a card's place on the rules page), and `ids.CardIds` (card
uuids that prove this service issued them). Clinicians edit `cards.toml`; see README.md here.
"""
