"""Whole-block scans: which patients a screen must assess, and their lines, without parsing the
export.

Only ~5% of an export's patients are on dialysis, and parsing every line costs more than the rest
of a screen. So each block of bytes is searched as a whole, in C (regular expressions, bytes
methods), and only lines that may matter are parsed:

1. `scope_candidates`: in Condition, Procedure and Encounter blocks, the distinct coded values and
   texts are collected in one pass; those that may name a concept bringing a patient onto the
   worklist (a superset test built from the knowledge) lead to their lines, which are parsed and
   matched exactly with the knowledge's own concept index.
2. `select_lines`: in every block, each line's subject is read by one regular expression; the
   lines of candidate patients are kept (Observations only when they carry a lab code the rules
   read), grouped by patient inside the block, and the rest is only counted.
"""

from __future__ import annotations

import re
import zlib
from bisect import bisect_right
from dataclasses import dataclass, field, fields

import orjson

from cds_service.clinical.record_builder import _ENCOUNTER_CONCEPTS
from cds_service.fhir.read import as_list, codings, concept_text, reference_of
from cds_service.knowledge import Knowledge, fold

# Concepts that can put a patient on the worklist: dialysis scope (assessment._scope reads
# sessions, ESRD and dialysis dependence) and a known calciphylaxis (critical even out of scope,
# assessment._tier). Everything else a card says needs one of these first.
SCOPE_CONDITIONS = ("esrd_on_dialysis", "dialysis_dependence", "calciphylaxis")
SCOPE_PROCEDURES = ("dialysis",)
SCOPE_TYPES = ("Condition", "Procedure", "Encounter")

# Coded values and texts, each pattern with a literal prefix (the regex engine then skips ahead
# with a fast substring search instead of trying every byte).
_KEYS = (b"code", b"text", b"display")
_VALUES = tuple(re.compile(rb'"' + key + rb'"\s*:\s*"((?:[^"\\\n]|\\.)*)"') for key in _KEYS)
# A line's patient: compact JSON, as Bulk exports write it (the fast path), and any spacing.
_SUBJECT_FAST = re.compile(rb'"subject":\{"reference":"Patient/([^"/\n]+)"')
_SUBJECT_IN_LINE = re.compile(
    rb'"(?:subject|patient)"\s*:\s*\{[^{}\n]*?"reference"\s*:\s*"(?:[^"\n]*/)?Patient/([^"/\n]+)"')
_NEWLINE = re.compile(rb"\n")
_ID = re.compile(rb'"id"\s*:\s*"([^"\\\n]+)"')
_ENTERED_IN_ERROR = b'"entered-in-error"'


@dataclass
class Counts:
    """What a screen read and skipped (sums over blocks; no identifiers)."""

    lines: int = 0
    patients: int = 0
    unreadable: int = 0  # not JSON (or not a JSON object)
    unknown_patient: int = 0  # subject is a patient the export does not hold
    no_patient_reference: int = 0  # a patient-compartment resource with no Patient subject
    entered_in_error: int = 0
    shipped_lines: int = 0  # lines of candidate patients sent to the shuffle
    shipped_bytes: int = 0
    shuffled_bytes: int = 0  # the same, compressed as the shuffle holds them

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _text(raw: bytes) -> str:
    if b"\\" in raw:
        try:
            return orjson.loads(b'"' + raw + b'"')
        except orjson.JSONDecodeError:
            return ""
    return raw.decode("utf-8", "replace")


def _code_form(code: str) -> str:
    """How codes are compared in the superset test: spellings the knowledge normalises (case,
    ICD-10 dots, blanks) all give the same form."""
    return code.strip().upper().replace(".", "")


@dataclass(frozen=True)
class ScopeTokens:
    """A superset test for 'may name a scope concept', built from the knowledge."""

    codes: frozenset[str]
    prefixes: tuple[str, ...]
    ranges: tuple[tuple[str, str], ...]
    texts: tuple[re.Pattern[str], ...]
    knowledge: Knowledge = field(repr=False, compare=False)

    @classmethod
    def of(cls, knowledge: Knowledge) -> ScopeTokens:
        concepts = ([knowledge.conditions[c] for c in SCOPE_CONDITIONS]
                    + [knowledge.procedures[c] for c in SCOPE_PROCEDURES])
        return cls(
            codes=frozenset(_code_form(code) for c in concepts for _s, code in c.codes),
            prefixes=tuple(_code_form(p) for c in concepts for _s, p in c.prefixes),
            ranges=tuple((_code_form(lo), _code_form(hi)) for c in concepts
                         for _s, lo, hi in c.ranges),
            texts=tuple(c.text for c in concepts if c.text is not None),
            knowledge=knowledge)

    def may_name(self, key: bytes, raw: bytes) -> bool:
        if key == b"code":
            code = _code_form(_text(raw))
            return (code in self.codes or code.startswith(self.prefixes) or any(
                len(code) == len(lo) and lo <= code <= hi for lo, hi in self.ranges))
        text = fold(_text(raw))
        return any(pattern.search(text) for pattern in self.texts)

    def names_scope_concept(self, resource: dict) -> bool:
        """Exactly as the record builder matches: the knowledge's concept index."""
        rtype = resource.get("resourceType")
        statuses = self.knowledge.statuses
        # What the record builder ignores by status cannot bring anyone into scope.
        if rtype == "Procedure" and resource.get("status") not in statuses.procedure or \
                rtype == "Encounter" and resource.get("status") not in statuses.encounter:
            return False
        if rtype == "Condition" and _verification(resource) in \
                statuses.condition_ignored_verification:
            return False
        if rtype == "Condition":
            concepts, index, wanted = [resource.get("code")], \
                self.knowledge.condition_index, SCOPE_CONDITIONS
        elif rtype in ("Procedure", "Encounter"):
            concepts = ([resource.get("code")] if rtype == "Procedure" else
                        [c for key in _ENCOUNTER_CONCEPTS for c in as_list(resource.get(key))])
            index, wanted = self.knowledge.procedure_index, SCOPE_PROCEDURES
        else:
            return False
        canonical = self.knowledge.code_systems.canonical
        found = tuple((*canonical(s, c), d) for concept in concepts for s, c, d in codings(concept))
        text = " ; ".join(t for concept in concepts if (t := concept_text(concept)))
        return any(concept in wanted for concept in index.match(found, text))


def _verification(condition: dict) -> str | None:
    found = codings(condition.get("verificationStatus"))
    return found[0][1] if found else None


def subject_of(resource: dict) -> str | None:
    for key in ("subject", "patient"):
        ref = reference_of(resource.get(key))
        if ref is not None:
            ref = ref.split("/_history/")[0]
            return ref.rsplit("Patient/", 1)[1] if "Patient/" in ref else None
    return None


def scope_candidates(block: bytes, tokens: ScopeTokens) -> set[str]:
    """Patients whose Condition, Procedure or Encounter lines in this block name a scope concept.

    The block's distinct coded values and texts are tested (a few hundred, however long the
    block); each line holding a value that passed is parsed and matched exactly, unless its
    patient is already a candidate (a dialysis patient has hundreds of sessions)."""
    hits: dict[bytes, list[bytes]] = {}
    for key, pattern in zip(_KEYS, _VALUES, strict=True):
        hits[key] = [raw for raw in set(pattern.findall(block)) if tokens.may_name(key, raw)]
    if not any(hits.values()):
        return set()
    # Compact JSON (as Bulk exports write it): one scan per key, its literal prefix found fast.
    compact = b'" :' not in block and b'": ' not in block
    needles = ([re.compile(rb'"' + key + rb'":"(?:' + b"|".join(map(re.escape, raws)) + rb')"')
                for key, raws in hits.items() if raws] if compact else
               [re.compile(rb'"' + key + rb'"\s*:\s*"' + re.escape(raw) + rb'"')
                for key, raws in hits.items() for raw in raws])
    starts = [0, *(m.end() for m in _NEWLINE.finditer(block))]
    hit_lines = set()
    for needle in needles:
        hit_lines.update(bisect_right(starts, m.start()) - 1 for m in needle.finditer(block))
    found: set[str] = set()
    for index in sorted(hit_lines):
        end = starts[index + 1] - 1 if index + 1 < len(starts) else len(block)
        line = block[starts[index]:end]
        subject = _SUBJECT_FAST.search(line) or _SUBJECT_IN_LINE.search(line)
        if subject is not None and subject.group(1).decode("utf-8", "replace") in found:
            continue
        try:
            resource = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # counted where every line is counted (select_lines)
        if isinstance(resource, dict) and tokens.names_scope_concept(resource):
            patient = subject_of(resource)
            if patient:
                found.add(patient)
    return found


def read_patients(block: bytes) -> tuple[set[str], Counts]:
    """The ids of the Patient resources in a block (every line parsed: one per patient)."""
    ids: set[str] = set()
    counts = Counts(lines=0)
    for line in block.split(b"\n"):
        if not line.strip():
            continue
        counts.lines += 1
        try:
            resource = orjson.loads(line)
        except orjson.JSONDecodeError:
            counts.unreadable += 1
            continue
        if isinstance(resource, dict) and resource.get("resourceType") == "Patient" \
                and isinstance(resource.get("id"), str):
            ids.add(resource["id"])
        else:
            counts.unreadable += 1
    counts.patients = len(ids)
    counts.entered_in_error = block.count(_ENTERED_IN_ERROR)
    return ids, counts


def read_medications(block: bytes) -> dict[str, bytes]:
    """Medication resources by reference ("Medication/id"): orders point at them."""
    found = {}
    for line in block.split(b"\n"):
        try:
            resource = orjson.loads(line) if line.strip() else None
        except orjson.JSONDecodeError:
            continue
        if isinstance(resource, dict) and isinstance(resource.get("id"), str):
            found[f"Medication/{resource['id']}"] = line
    return found


def _line_at(block: bytes, position: int) -> bytes:
    start = block.rfind(b"\n", 0, position) + 1
    end = block.find(b"\n", position)
    return block[start:end if end >= 0 else len(block)]


def _patient_lines(block: bytes, candidates: frozenset[bytes]) -> dict[str, list[bytes]]:
    """The Patient lines of candidates (a Patient names itself by `id`)."""
    kept: dict[str, list[bytes]] = {}
    for match in _ID.finditer(block):
        raw = match.group(1)
        patient = raw.decode("utf-8", "replace")
        if raw in candidates and patient not in kept:
            line = _line_at(block, match.start())
            try:
                resource = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(resource, dict) and resource.get("id") == patient:
                kept[patient] = [line]
    return kept


def _parses(line: bytes) -> bool:
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return True


def _subjects(lines: list[bytes], block: bytes) -> list[bytes | None]:
    """Each line's patient id (None: none). Compact lines with one subject each, the usual Bulk
    shape, are read by one pass over the block; anything else line by line."""
    fast = _SUBJECT_FAST.findall(block)
    if len(fast) == len(lines):
        return fast  # aligned: kept lines are checked again in select_lines
    found = []
    for line in lines:
        match = _SUBJECT_FAST.search(line) or _SUBJECT_IN_LINE.search(line)
        found.append(match.group(1) if match else None)
    return found


def _all_shaped(block: bytes, lines: int) -> bool:
    """Whether every one of the block's `lines` is one JSON object's shape, told by counting
    bytes in C: each starts with "{" and ends with "}", none is blank, and the braces balance (a
    line cut short leaves more "{" than "}")."""
    return (block[:1] == b"{" and block.rstrip()[-1:] == b"}"
            and block.count(b"}\n{") == lines - 1
            and block.count(b"{") == block.count(b"}"))


def _shapes(lines: list[bytes]) -> list[bool]:
    """Per line: readable? Only a line not shaped as one JSON object is parsed to be sure (a
    brace inside a string can make a sound line look unbalanced)."""
    shaped = [line[:1] == b"{" and line.rstrip()[-1:] == b"}"
              and line.count(b"{") == line.count(b"}") for line in lines]
    for index in [i for i, ok in enumerate(shaped) if not ok]:
        shaped[index] = _parses(lines[index])
    return shaped


def select_lines(block: bytes, resource_type: str, candidates: frozenset[bytes],
                 known: frozenset[bytes] | None, lab_codes: re.Pattern[bytes] | None
                 ) -> tuple[list[tuple[str, bytes]], Counts]:
    """(patient, its lines in this block, packed) for candidate patients; the rest counted.
    Patient ids are compared as bytes: nothing is decoded but the candidates' ids."""
    if resource_type == "Patient":
        kept = _patient_lines(block, candidates)
        return _packed(kept, Counts(shipped_lines=len(kept), shipped_bytes=sum(
            len(lines[0]) for lines in kept.values())))
    lines = block.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    if _all_shaped(block, len(lines)):
        shaped = None
    else:
        lines = [line for line in lines if line.strip()]
        shaped = _shapes(lines)
    counts = Counts(lines=len(lines), entered_in_error=block.count(_ENTERED_IN_ERROR))
    counts.unreadable = shaped.count(False) if shaped is not None else 0
    subjects = _subjects(lines, block)
    counts.no_patient_reference = subjects.count(None)
    if known is not None:
        counts.unknown_patient = len(subjects) - counts.no_patient_reference - sum(
            map(known.__contains__, subjects))
    kept: dict[str, list[bytes]] = {}
    for index in [i for i, patient in enumerate(subjects) if patient in candidates]:
        line, subject = lines[index], subjects[index]
        if shaped is not None and not shaped[index]:
            continue
        if b"Patient/" + subject + b'"' not in line:
            return _select_slowly(lines, shaped, counts, candidates, lab_codes)
        if lab_codes is not None and not lab_codes.search(line):
            continue  # an Observation of no lab the rules read: the record builder skips it
        kept.setdefault(subject.decode("utf-8", "replace"), []).append(line)
    counts.shipped_lines = sum(len(v) for v in kept.values())
    counts.shipped_bytes = sum(len(line) for v in kept.values() for line in v)
    return _packed(kept, counts)


def _select_slowly(lines, shaped, counts, candidates, lab_codes):
    """The same selection, each line searched on its own (the block was not aligned)."""
    kept: dict[str, list[bytes]] = {}
    for index, line in enumerate(lines):
        match = _SUBJECT_IN_LINE.search(line)
        patient = match.group(1) if match else None
        if (shaped is None or shaped[index]) and patient in candidates and (
                lab_codes is None or lab_codes.search(line)):
            kept.setdefault(patient.decode("utf-8", "replace"), []).append(line)
    counts.shipped_lines = sum(len(v) for v in kept.values())
    counts.shipped_bytes = sum(len(line) for v in kept.values() for line in v)
    return _packed(kept, counts)


def _packed(kept: dict[str, list[bytes]], counts: Counts
            ) -> tuple[list[tuple[str, bytes]], Counts]:
    """Each patient's lines as one zlib-compressed chunk: the shuffle holds and moves ~8 times
    fewer bytes (FHIR JSON repeats itself), which bounds the workers' memory as candidates grow."""
    packed = [(patient, zlib.compress(b"\n".join(lines), 1)) for patient, lines in kept.items()]
    counts.shuffled_bytes = sum(len(chunk) for _patient, chunk in packed)
    return packed, counts


def unpacked(chunk: bytes) -> list[bytes]:
    return zlib.decompress(chunk).split(b"\n")


def lab_code_pattern(knowledge: Knowledge) -> re.Pattern[bytes]:
    """Observations the record builder can read carry one of these LOINC codes (in any system
    spelling: the code itself is the same)."""
    codes = b"|".join(re.escape(c.encode()) for c in sorted(knowledge.lab_by_loinc))
    return re.compile(rb'"code"\s*:\s*"\s*(?:' + codes + rb')\s*"')

