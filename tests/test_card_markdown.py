"""The card details as a Markdown reader sees them: each template, with 0, 1 and many items in
each of its lists, parsed by markdown-it-py (the CommonMark reference port), and every fixture's
cards. Structure is asserted (headings, lists, their items), not substrings.

Issue 14 found "Other risk factors" run together into one bullet with two or more of them.
"""

from __future__ import annotations

import itertools
import re

import pytest
from conftest import MANIFEST, load_request
from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode

from cds_service.cards.writer import CardTemplates, CardWriter, Rendered

MD = MarkdownIt("commonmark")
COUNTS = (0, 1, 3)


def blocks(markdown: str) -> list[tuple[str, object]]:
    """Top-level blocks: ("p", text) or ("list", [item texts]); anything else fails the test."""
    found = []
    for node in SyntaxTreeNode(MD.parse(markdown)).children:
        if node.type == "paragraph":
            found.append(("p", node.children[0].content))
        elif node.type == "bullet_list":
            items = []
            for item in node.children:
                # One paragraph per item: a second block would be a list run into the next.
                assert [c.type for c in item.children] == ["paragraph"], markdown
                items.append(item.children[0].children[0].content)
            found.append(("list", items))
        else:
            raise AssertionError(f"unexpected {node.type} block in:\n{markdown}")
    return found


def sections(markdown: str) -> dict[str, list[str]]:
    """Each bold heading ("**Other risk factors**") with the items of the list under it; a
    heading must be followed by a non-empty list."""
    found: dict[str, list[str]] = {}
    parsed = blocks(markdown)
    for position, (kind, content) in enumerate(parsed):
        if kind == "p" and _is_heading(content):
            heading = content.strip("*").rstrip(":")
            assert position + 1 < len(parsed) and parsed[position + 1][0] == "list", \
                f"heading {heading!r} has no list under it:\n{markdown}"
            assert heading not in found, f"{heading!r} twice"
            found[heading] = parsed[position + 1][1]
        elif kind == "list":
            assert position > 0 and _is_heading(parsed[position - 1][1]), \
                f"a list without its heading:\n{markdown}"
    return found


def _is_heading(text) -> bool:
    return isinstance(text, str) and text.startswith("**") and text.endswith("**") \
        and text.count("**") == 2


@pytest.fixture(scope="module")
def writer(knowledge):
    return CardWriter(knowledge, CardTemplates.load())


def _factors(n: int, action: bool = True) -> list[dict]:
    return [{"label": f"factor {i}", "lines": [Rendered(f"evidence {i}a"), Rendered(f"e {i}b")],
             "action": Rendered(f"Do thing {i}.") if action else ""} for i in range(n)]


def _context(n: int) -> list[dict]:
    # Female sex is named by its label alone, without lines.
    return [{"label": f"context {i}", "lines": [Rendered(f"c {i}")] if i else []}
            for i in range(n)]


def _lines(prefix: str, n: int) -> list[Rendered]:
    return [Rendered(f"{prefix} {i}") for i in range(n)]


def _expected(n_factors, n_context, n_why, n_unreadable, *, factor_heading: str) -> dict:
    expected = {}
    if n_why:
        expected["Why this card warns"] = [f"why {i}" for i in range(n_why)]
    if n_factors:
        expected[factor_heading] = [f"**factor {i}**: evidence {i}a; e {i}b"
                                    for i in range(n_factors)]
    if n_context:
        expected["Other risk factors"] = ["context 0", *(f"context {i}: c {i}"
                                                         for i in range(1, n_context))]
    if n_unreadable:
        expected["Could not be read"] = [f"unreadable {i}" for i in range(n_unreadable)]
    return expected


def _common_tail(writer, detail: str) -> None:
    # The scope note, then the sources: plain paragraphs at the end, never run into a list.
    *_, (note_kind, note), (sources_kind, sources) = blocks(detail)
    assert (note_kind, sources_kind) == ("p", "p")
    assert note.startswith(writer.scope_note[:40])
    assert sources.startswith("**Sources:**")


@pytest.mark.parametrize("tier", ["critical", "warning", "info"])
def test_patient_view_detail_lists_every_item_once_in_its_own_bullet(writer, knowledge, tier):
    from cds_service.clinical.record import PatientRecord

    assessment_stub = _Stub(transplanted=False)
    for n_factors, n_context, n_why, n_unreadable, n_calciphylaxis in itertools.product(
            COUNTS, COUNTS, COUNTS, COUNTS, (0, 1, 2)):
        body = writer.pv_detail.render(
            tier=tier, calciphylaxis=_lines("**Calciphylaxis** line", n_calciphylaxis),
            why=_lines("why", n_why), scope=Rendered("On maintenance dialysis: hemodialysis"),
            factors=_factors(n_factors), context=_context(n_context),
            unreadable=_lines("unreadable", n_unreadable), pth_overdue=n_unreadable == 1,
            pth_interval_days=180)
        detail = writer._detail(body, assessment_stub)
        found = sections(detail)
        expected = _expected(n_factors, n_context, n_why, n_unreadable,
                             factor_heading="Modifiable risk factors")
        if n_factors:
            expected["What to consider"] = [f"Do thing {i}." for i in range(n_factors)]
        assert found == expected, detail
        paragraphs = [c for kind, c in blocks(detail) if kind == "p"]
        assert paragraphs[:n_calciphylaxis] == [f"**Calciphylaxis** line {i}"
                                                for i in range(n_calciphylaxis)]
        _common_tail(writer, detail)
    assert PatientRecord  # the stub stands for an assessment: only `transplanted` is read


def test_advice_heading_is_left_out_when_no_factor_has_advice(writer):
    body = writer.pv_detail.render(
        tier="info", calciphylaxis=[], why=[], scope=Rendered("On maintenance dialysis"),
        factors=_factors(2, action=False), context=[], unreadable=[], pth_overdue=False,
        pth_interval_days=180)
    found = sections(writer._detail(body, _Stub(transplanted=False)))
    assert "What to consider" not in found
    assert len(found["Modifiable risk factors"]) == 2


@pytest.mark.parametrize("tier", ["critical", "warning", "info"])
def test_order_detail_lists_every_item_once_in_its_own_bullet(writer, tier):
    for n_factors, n_context, n_why, n_unreadable, n_drafts in itertools.product(
            COUNTS, COUNTS, COUNTS, COUNTS, (0, 1, 2)):
        body = writer.order_detail.render(
            tier=tier, calciphylaxis=[], why=_lines("why", n_why), order="warfarin 5 mg",
            drug="warfarin", factor="warfarin (vitamin K antagonist)",
            action=Rendered("Review the indication."), scope=Rendered("On maintenance dialysis"),
            factors=_factors(n_factors), context=_context(n_context),
            other_drafts=[f"draft {i}" for i in range(n_drafts)],
            unreadable=_lines("unreadable", n_unreadable))
        detail = writer._detail(body, _Stub(transplanted=False))
        assert sections(detail) == _expected(
            n_factors, n_context, n_why, n_unreadable,
            factor_heading="The patient's modifiable risk factors"), detail
        paragraphs = [c for kind, c in blocks(detail) if kind == "p"]
        assert paragraphs[0].startswith("**warfarin 5 mg**")
        assert "Review the indication." in paragraphs
        assert any(p.startswith("Also being ordered") for p in paragraphs) == bool(n_drafts)
        _common_tail(writer, detail)


def test_pth_detail_lists_unreadable_results_in_their_own_bullets(writer):
    for n in COUNTS:
        body = writer.pv_pth_detail.render(pth_interval_days=180, scope=Rendered("On dialysis"),
                                           unreadable=_lines("unreadable", n))
        detail = writer._detail(body, _Stub(transplanted=True))
        assert sections(detail) == ({"Could not be read": [f"unreadable {i}" for i in range(n)]}
                                    if n else {})
        note = blocks(detail)[-2][1]
        assert writer.transplant_note in note


@pytest.mark.parametrize("case", MANIFEST["cases"], ids=[c["name"] for c in MANIFEST["cases"]])
def test_every_fixture_card_parses_into_headed_lists(client, case):
    hook = case["hook"]
    response = client.post(f"/cds-services/calciphylaxis-{hook}", json=load_request(case))
    if response.status_code != 200:
        return
    for card in response.get_json()["cards"]:
        found = sections(card["detail"])
        for heading, items in found.items():
            assert items and all(item.strip() for item in items), (heading, card["detail"])
            # One factor per bullet: a bullet never carries the start of another.
            assert not any("\n- " in item or ")- " in item for item in items), card["detail"]


class _Stub:
    def __init__(self, transplanted: bool):
        self.transplanted = transplanted


def _codes(node) -> set[str]:
    """Every Coding.code in a request (its draft orders and prefetch)."""
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("code"), str) and "system" in node:
            found.add(node["code"])
        for value in node.values():
            found |= _codes(value)
    elif isinstance(node, list):
        for value in node:
            found |= _codes(value)
    return found


@pytest.mark.parametrize("case", MANIFEST["cases"], ids=[c["name"] for c in MANIFEST["cases"]])
def test_clinicians_read_names_not_codes(client, case, knowledge):
    """Issue 14 saw "(162864005)", "(D68.61)" and "Calciphylaxis (Calciphylaxis (237900002))"
    in the prose: codes belong in structured data (the rules page, the FHIR resources)."""
    request = load_request(case)
    response = client.post(f"/cds-services/calciphylaxis-{case['hook']}", json=request)
    if response.status_code != 200:
        return
    # Codes long enough not to be a dose or a value (RxNorm, SNOMED, ICD-10-CM, CPT, LOINC).
    codes = {c for c in _codes(request) if len(c) >= 4 and any(ch.isdigit() for ch in c)}
    for card in response.get_json()["cards"]:
        prose = " ".join([card["summary"], card["detail"],
                          *(s["label"] for s in card.get("suggestions", ()))])
        words = set(re.findall(r"[A-Za-z0-9][A-Za-z0-9.\-]*[A-Za-z0-9]", prose))
        assert not codes & words, (codes & words, card["detail"])
        assert not re.search(r"\((?:[A-Z]\d{2}\.?\d*|\d{5,})\)", prose), card["detail"]
