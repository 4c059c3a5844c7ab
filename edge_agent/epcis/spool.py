"""EPCIS documents too large for memory (``edge-agent outbox export`` of a long history).

The events are written one at a time into a spool file; the document's head, which depends on
every event (the merged ``@context`` in JSON-LD, the namespaces declared on the root in XML), is
known once the last one is in, and is then written before the spooled events. Memory holds one
event at a time; the bytes are exactly those of ``json.dumps(document(events), indent=1)`` and
``xml12.document_xml(events)``. A failure while converting an event (ValueError, Unsupported)
comes before anything is written to the target.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from edge_agent.epcis.events import Context, event_time
from edge_agent.epcis.xml12 import EPCIS_NS, _event, document_xml

_JSON_INDENT = "   "  # an event's depth in the document: root, epcisBody, eventList
_EMPTY_LIST = '"eventList": []'
_XML_EVENT = "\n      "  # ET.indent's two spaces per level, events at level 3
_XML_TAIL = "\n    </EventList>\n  </EPCISBody>\n</epcis:EPCISDocument>"
_XMLNS = re.compile(r' xmlns:(\w+)="([^"]*)"')


@dataclass
class Spooled:
    count: int
    head: bytes
    body: IO[bytes]
    tail: bytes

    def write_to(self, out: IO[bytes]) -> None:
        out.write(self.head)
        self.body.seek(0)
        shutil.copyfileobj(self.body, out, 1024 * 1024)
        out.write(self.tail)


@contextmanager
def json_document(
    events: Iterable[Mapping[str, Any]],
    *,
    when: datetime | None = None,
    spool_dir: Path | None = None,
) -> Iterator[Spooled]:
    """``events`` as one EPCIS 2.0 JSON-LD document, indented by one space per level."""
    context = Context()
    count = 0
    with tempfile.TemporaryFile(dir=spool_dir) as body:
        for event in events:
            text = json.dumps(context.lift(event), indent=1)
            body.write(
                (
                    (",\n" if count else "")
                    + _JSON_INDENT
                    + text.replace("\n", "\n" + _JSON_INDENT)
                ).encode()
            )
            count += 1
        # JSON strings hold no raw newline and no unescaped quote: the marker is the list's own
        head = json.dumps(context.envelope([], when=when), indent=1)
        cut = head.rindex(_EMPTY_LIST)
        if count:
            spooled = Spooled(
                count,
                (head[:cut] + '"eventList": [\n').encode(),
                body,
                ("\n  ]" + head[cut + len(_EMPTY_LIST) :]).encode(),
            )
        else:
            spooled = Spooled(0, head.encode(), body, b"")
        yield spooled


@contextmanager
def xml_document(
    events: Iterable[Mapping[str, Any]],
    *,
    when: datetime | None = None,
    spool_dir: Path | None = None,
) -> Iterator[Spooled]:
    """``events`` as one EPCIS 1.2 XML document (``xml12.document_xml``)."""
    namespaces = {"epcis": EPCIS_NS}
    count = 0
    with tempfile.TemporaryFile(dir=spool_dir) as body:
        for event in events:
            # Serialised inside a holder, the namespaces the event uses are declared on the
            # holder: they go to the document's root, as ElementTree puts them there
            holder = ET.Element("holder")
            _event(holder, event)
            ET.indent(holder[0], level=3)
            text = ET.tostring(holder, encoding="unicode")
            start = text.index(">") + 1
            namespaces.update(_XMLNS.findall(text[:start]))
            body.write((_XML_EVENT + text[start : -len("</holder>")]).encode())
            count += 1
        declarations = "".join(f' xmlns:{p}="{uri}"' for p, uri in sorted(namespaces.items()))
        head = (
            "<?xml version='1.0' encoding='utf-8'?>\n"
            f"<epcis:EPCISDocument{declarations} "
            f'schemaVersion="1.2" creationDate="{event_time(when)[0]}">\n'
            "  <EPCISBody>\n    <EventList>"
        )
        if count:
            yield Spooled(count, head.encode(), body, _XML_TAIL.encode())
        else:
            yield Spooled(0, document_xml([], when=when), body, b"")
