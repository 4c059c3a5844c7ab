"""EPC pure-identity URIs (GS1 EPC Tag Data Standard 2.x) for what a packaging line identifies.

The GS1 company prefix length is not in the GTIN: it comes from the company's GS1 membership and
is configured (``[line] company_prefix_length``). A wrong length gives a well-formed but wrong URI,
so every builder checks what it can (digits, lengths, check digit).
"""

from __future__ import annotations

from edge_agent.errors import Gs1Error
from edge_agent.gs1.check import mod10_check_digit

# Characters that must be %-escaped in the serial part of an EPC pure identity URI (TDS 2.x).
_URI_ESCAPES = {'"': "%22", "%": "%25", "&": "%26", "/": "%2F", "<": "%3C", ">": "%3E", "?": "%3F"}


def _escape(serial: str) -> str:
    return "".join(_URI_ESCAPES.get(ch, ch) for ch in serial)


def _check_prefix_length(company_prefix_length: int) -> None:
    if not 6 <= company_prefix_length <= 12:
        raise Gs1Error(f"company prefix length must be 6..12, got {company_prefix_length}")


def sgtin_uri(gtin: str, serial: str, company_prefix_length: int) -> str:
    """``urn:epc:id:sgtin:CompanyPrefix.IndicatorItemRef.Serial`` for a GTIN-14."""
    _check_prefix_length(company_prefix_length)
    if len(gtin) != 14 or not gtin.isdigit():
        raise Gs1Error(f"GTIN must be 14 digits, got {gtin!r}", ai="01")
    if not 1 <= len(serial) <= 20:
        raise Gs1Error(f"serial must be 1..20 characters, got {len(serial)}", ai="21")
    indicator, body = gtin[0], gtin[1:13]
    prefix, item_ref = body[:company_prefix_length], indicator + body[company_prefix_length:]
    return f"urn:epc:id:sgtin:{prefix}.{item_ref}.{_escape(serial)}"


def sscc_uri(sscc: str, company_prefix_length: int) -> str:
    """``urn:epc:id:sscc:CompanyPrefix.ExtensionSerialRef`` for an 18-digit SSCC (AI 00)."""
    _check_prefix_length(company_prefix_length)
    if len(sscc) != 18 or not sscc.isdigit():
        raise Gs1Error(f"SSCC must be 18 digits, got {sscc!r}", ai="00")
    if str(mod10_check_digit(sscc[:17])) != sscc[17]:
        raise Gs1Error(f"SSCC {sscc} has a wrong check digit", ai="00")
    extension, body = sscc[0], sscc[1:17]
    prefix, serial_ref = body[:company_prefix_length], extension + body[company_prefix_length:]
    return f"urn:epc:id:sscc:{prefix}.{serial_ref}"


def sgln_uri(gln: str, extension: str, company_prefix_length: int) -> str:
    """``urn:epc:id:sgln:CompanyPrefix.LocationRef.Extension`` for a 13-digit GLN (+ AI 254)."""
    _check_prefix_length(company_prefix_length)
    if len(gln) != 13 or not gln.isdigit():
        raise Gs1Error(f"GLN must be 13 digits, got {gln!r}", ai="414")
    if str(mod10_check_digit(gln[:12])) != gln[12]:
        raise Gs1Error(f"GLN {gln} has a wrong check digit", ai="414")
    prefix, location_ref = gln[:company_prefix_length], gln[company_prefix_length:12]
    return f"urn:epc:id:sgln:{prefix}.{location_ref}.{_escape(extension or '0')}"
