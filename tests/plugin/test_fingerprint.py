from __future__ import annotations

import pytest

from krita_plugin.fingerprint import CanvasWatcher
from krita_plugin.nodes import node_id
from tests.plugin.fake_krita import Document


@pytest.fixture
def doc(qapp) -> Document:
    doc = Document(8, 8)
    for name in ("a", "b"):
        doc.rootNode().addChildNode(doc.createNode(name, "paintlayer"), None)
    doc.setActiveNode(doc.find("a"))
    return doc


def test_unchanged_canvas_keeps_its_fingerprint(doc: Document) -> None:
    watcher = CanvasWatcher()
    assert watcher.fingerprint(doc, exclude=set()) == watcher.fingerprint(doc, exclude=set())


def test_painting_on_the_active_layer_is_seen_at_once(doc: Document) -> None:
    watcher = CanvasWatcher(full_scan_every=1000)
    before = watcher.fingerprint(doc, exclude=set())
    doc.find("a").setPixelData(b"\x01\x02\x03\xff", 3, 3, 1, 1)
    assert watcher.fingerprint(doc, exclude=set()) != before


def test_changes_elsewhere_are_seen_by_the_periodic_full_scan(doc: Document) -> None:
    watcher = CanvasWatcher(full_scan_every=3)
    before = watcher.fingerprint(doc, exclude=set())  # tick 1
    doc.find("b").setPixelData(b"\x01\x02\x03\xff", 3, 3, 1, 1)
    doc.find("b").setPixelData(b"\x00\x00\x00\x00", 3, 3, 1, 1)
    doc.find("b").setPixelData(b"\x09\x09\x09\xff", 3, 3, 1, 1)
    seen = [watcher.fingerprint(doc, exclude=set()) != before for _ in range(3)]
    assert seen[-1]  # by the full scan at the latest


def test_layer_properties_change_the_fingerprint(doc: Document) -> None:
    watcher = CanvasWatcher()
    before = watcher.fingerprint(doc, exclude=set())
    doc.find("b").setVisible(False)
    hidden = watcher.fingerprint(doc, exclude=set())
    assert hidden != before
    doc.find("b").setVisible(True)
    doc.find("b").setOpacity(100)
    assert watcher.fingerprint(doc, exclude=set()) not in (before, hidden)


def test_excluded_layers_never_change_it(doc: Document) -> None:
    watcher = CanvasWatcher(full_scan_every=1)
    preview = doc.find("b")
    before = watcher.fingerprint(doc, exclude={node_id(preview)})
    preview.setPixelData(b"\x01\x02\x03\xff" * 64, 0, 0, 8, 8)
    preview.setVisible(False)
    assert watcher.fingerprint(doc, exclude={node_id(preview)}) == before


def test_extra_state_is_part_of_it(doc: Document) -> None:
    watcher = CanvasWatcher()
    assert watcher.fingerprint(doc, exclude=set(), extra="prompt a") != watcher.fingerprint(
        doc, exclude=set(), extra="prompt b"
    )
