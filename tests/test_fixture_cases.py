"""Contract tests: every fixture request through the HTTP API gives the cards its manifest expects.

The expectations in fixtures/manifest.json were written from docs/clinical.md, case by case.
"""

from __future__ import annotations

import pytest
from conftest import MANIFEST, load_request

SERVICE_OF_HOOK = {
    "patient-view": "calciphylaxis-patient-view",
    "order-select": "calciphylaxis-order-select",
    "order-sign": "calciphylaxis-order-sign",
}


def _text(card: dict) -> str:
    return f"{card['summary']}\n{card.get('detail', '')}".lower()


@pytest.mark.parametrize("case", MANIFEST["cases"], ids=[c["name"] for c in MANIFEST["cases"]])
def test_fixture_gives_the_expected_cards(client, case):
    response = client.post(f"/cds-services/{SERVICE_OF_HOOK[case['hook']]}",
                           json=load_request(case))
    expect = case["expect"]
    assert response.status_code == expect["status"], response.get_json()
    if expect["status"] != 200:
        assert response.get_json()["resourceType"] == "OperationOutcome"
        return
    cards = response.get_json()["cards"]
    assert len(cards) == len(expect["cards"]), [c["summary"] for c in cards]
    for card, wanted in zip(cards, expect["cards"], strict=True):
        assert card["indicator"] == wanted["indicator"], card["summary"]
        for mention in wanted.get("mentions", []):
            assert mention.lower() in _text(card), (mention, card["summary"])
        for absent in wanted.get("absent", []):
            assert absent.lower() not in _text(card), (absent, card["summary"])
        labels = " ".join(s["label"] for s in card.get("suggestions", [])).lower()
        for mention in wanted.get("suggestions_mention", []):
            assert mention.lower() in labels
        for absent in wanted.get("suggestions_absent", []):
            assert absent.lower() not in labels, (absent, labels)
        if not wanted.get("suggestions_allowed", True):
            assert "suggestions" not in card, labels
