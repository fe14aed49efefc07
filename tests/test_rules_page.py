"""GET /rules: the page a card's source and last link open (issue 14). It must explain every
card the service writes, follow the knowledge file when a committee edits it, and need no token.
"""

from __future__ import annotations

import html
import re
import shutil
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from conftest import MANIFEST, load_request
from test_security import CLIENTS, write_config

from cds_service.bootstrap import create_app
from cds_service.cards.writer import CardTemplates, CardWriter
from cds_service.knowledge import KNOWLEDGE_DIR, load_knowledge
from cds_service.ops.config import load_settings
from cds_service.web.rules import render_rules


class PageParts(HTMLParser):
    """The ids, the links and the tags of a page, as a browser's parser sees them."""

    def __init__(self, page: str):
        super().__init__()
        self.ids: list[str] = []
        self.hrefs: list[str] = []
        self.tags: set[str] = set()
        self.handlers: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        for name, value in attrs:
            if name == "id":
                self.ids.append(value)
            elif name == "href":
                self.hrefs.append(value)
            elif name.startswith("on"):
                self.handlers.append(name)


@pytest.fixture(scope="module")
def page(client) -> str:
    response = client.get("/rules")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    return response.get_data(as_text=True)


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


def card_urls(client) -> list[str]:
    urls = []
    for case in MANIFEST["cases"]:
        response = client.post(f"/cds-services/calciphylaxis-{case['hook']}",
                               json=load_request(case))
        if response.status_code == 412:  # the fixtures that lack data on purpose
            continue
        assert response.status_code == 200, case["name"]
        for card in response.get_json()["cards"]:
            urls.append(card["source"]["url"])
            urls += [link["url"] for link in card.get("links", ())]
    return urls


def test_every_anchor_a_card_names_is_on_the_page(client, page):
    ids = set(PageParts(page).ids)
    rule_urls = [u for u in card_urls(client) if urlsplit(u).path == "/rules"]
    anchors = {urlsplit(u).fragment for u in rule_urls}
    # The fixtures reach every tier, several warnings and the monitoring card.
    assert {"tier-critical", "monitoring"} <= anchors
    assert any(a.startswith("warning-") for a in anchors)
    assert all(a for a in anchors), "a rules link without an anchor"
    assert anchors <= ids, f"anchors cards name but the page lacks: {anchors - ids}"


def test_the_page_has_a_place_for_every_rule_in_the_knowledge(page, knowledge):
    ids = PageParts(page).ids
    assert len(ids) == len(set(ids)), "an id used twice"
    wanted = {"scope", "tier-critical", "tier-warning", "tier-info", "suggestions", "monitoring",
              "quieting", "sources", "version"}
    wanted |= {f"warning-{p.id}" for p in knowledge.warnings}
    wanted |= {f"factor-{f}" for f in knowledge.factors}
    assert wanted <= set(ids), wanted - set(ids)


def test_every_code_threshold_and_source_of_the_knowledge_is_shown(page, knowledge):
    text = html.unescape(page)
    assert knowledge.version in text
    for medicine in knowledge.medicines.classes:
        for code in medicine.rxnorm:
            assert f"<code>{code}</code>" in text, (medicine.id, code)
        for atc, _name in medicine.atc:
            assert f"<code>{atc}</code>" in text, (medicine.id, atc)
    for lab in knowledge.labs.values():
        if any(c.lab == lab.id for f in knowledge.factors.values() for c in f.labs):
            for code in lab.loinc:
                assert f"<code>{code}</code>" in text, (lab.id, code)
    assert "> 10.2 mg/dL (= > 2.54 mmol/L)" in text
    assert "> 1.32 mmol/L" in text
    assert "> 9 × the assay's upper limit of normal" in text and "> 585 pg/mL" in text
    assert "> 5.5 mg/dL (= > 1.78 mmol/L)" in text
    for factor in knowledge.factors.values():
        assert factor.evidence in text, factor.id
    for pairing in knowledge.warnings:
        assert pairing.why in text, pairing.id
    for substitute in knowledge.substitutes:
        assert substitute.display in text and substitute.sig in text, substitute.id
    assert "8.4 mg/dL" in text  # the cinacalcet gate
    assert "30 days" in text  # override_quiet_days, the default


def test_the_page_is_plain_html_whose_own_links_resolve(page):
    parts = PageParts(page)
    assert "script" not in parts.tags and not parts.handlers, "the page must need no JavaScript"
    assert 'name="viewport"' in page
    ids = set(parts.ids)
    internal = [h[1:] for h in parts.hrefs if h.startswith("#")]
    assert internal and set(internal) <= ids, set(internal) - ids
    external = [h for h in parts.hrefs if not h.startswith("#")]
    assert external and all(h.startswith("https://") for h in external), external


def test_the_page_follows_an_edited_knowledge_file(tmp_path):
    """A committee changes a threshold, a source line and a code: the page says so, escaped."""
    folder = tmp_path / "knowledge"
    shutil.copytree(KNOWLEDGE_DIR, folder)
    path = folder / "knowledge.toml"
    spec = path.read_text()
    spec = spec.replace('above_uln_multiple = 9.0, default_uln = 65.0',
                        'above_uln_multiple = 8.0, default_uln = 65.0')
    spec = spec.replace('["405155", "Jantoven", "V"],',
                        '["405155", "Jantoven", "V"],\n  ["999999", "Committee <b>test</b>", "S"],')
    spec = spec.replace('evidence = "OR 6.04 (Mazhar', 'evidence = "OR <i>6.04</i> (Mazhar')
    path.write_text(spec)
    knowledge = load_knowledge(folder)
    writer = CardWriter(knowledge, CardTemplates.load())
    edited = render_rules(knowledge, writer, quiet_days=14, knowledge_dir=folder)
    assert "&gt; 8 × the assay&#39;s upper limit of normal" in edited
    assert "&gt; 520 pg/mL" in edited and "&gt; 585 pg/mL" not in edited
    assert "<code>999999</code>" in edited and "Committee &lt;b&gt;test&lt;/b&gt;" in edited
    assert "OR &lt;i&gt;6.04&lt;/i&gt;" in edited
    assert "for 14 days" in edited


def test_the_page_needs_no_token_where_hook_calls_do(tmp_path):
    app = create_app(load_settings(write_config(tmp_path, CLIENTS)))
    client = app.test_client()
    assert client.get("/cds-services").status_code == 401
    response = client.get("/rules")
    assert response.status_code == 200 and b"how it decides" in response.data
    again = client.get("/rules", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304


def test_advice_is_shown_for_each_situation_the_templates_distinguish(page):
    section = re.search(r'<section id="factor-calcium_binder">(.*?)</section>', page, re.S)
    advice = section.group(1)
    # The default, the high-calcium, the low-PTH and the low-phosphate wordings of cards.toml.
    assert "Restrict calcium-based binders" in advice
    assert "Calcium is high: reduce the dose" in advice
    assert "adynamic bone" in advice
    assert "Phosphate is below the target range" in advice
    warfarin = re.search(r'<section id="factor-vitamin_k_antagonist">(.*?)</section>', page,
                         re.S).group(1)
    assert warfarin.count("Review the indication") == 2  # with and without the DOAC sentence
    assert "A DOAC may be used" in warfarin
