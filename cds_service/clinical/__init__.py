"""The clinical core: FHIR resources -> a patient record -> an assessment. Pure: no Flask, no I/O.

Public API: `record_builder.build_record` (select, validate and normalise the resources the rules
use), `record.PatientRecord` (the typed digest it returns), `assessment.assess` (record +
knowledge + now -> findings, tier, pairings and suggestions, each with its evidence),
`lab_values` (a result as the lab sent it) and `repeat_keys.card_keys` (what a card is about, for
override quieting). The hooks and population screening both call exactly this code.
"""
