"""The DNS records a hosted domain publishes so that ordinary mail servers reach it and trust its mail.

``manage.py dnsrecords DOMAIN`` prints them in zone-file form: the MX (this
gateway), SPF, one DKIM record per published key (the current selector, and a
retired one until it expires, so rotation never breaks mail in transit), DMARC,
and where the Pushmail discovery document must be served.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from accounts.models import Domain
from federation import discovery
from federation.keys import current_dkim_key
from federation.models import DkimKey

from . import outbound, services


@dataclass(frozen=True)
class Record:
    name: str
    rtype: str
    value: str
    note: str

    def zone_line(self) -> str:
        value = self.value if self.rtype == "MX" else _quoted(self.value)
        return f"{self.name}.\t3600\tIN\t{self.rtype}\t{value}"


def _quoted(value: str) -> str:
    # A TXT string holds at most 255 bytes: longer values (DKIM keys) as several strings, as zone files do.
    return " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))


def records_for(domain: Domain) -> list[Record]:
    """The records to publish for ``domain`` (its DKIM key is made now if it has none yet)."""
    name = domain.name
    mx_host = services.hostname().rstrip(".")
    current_dkim_key(domain)
    smarthost = outbound.relay()
    if smarthost is None:
        spf = f"v=spf1 mx a:{mx_host} ~all"
        spf_note = "SPF: mail leaves from this host; add ip4:/ip6: for every other address the workers send from."
    else:
        spf = f"v=spf1 mx a:{smarthost.host} ~all"
        spf_note = f"SPF: mail leaves through {smarthost.host}; use your provider's include: if it gives one."
    records = [
        Record(name, "MX", f"10 {mx_host}.", f"MX: ordinary mail for {name} comes to this SMTP gateway."),
        Record(name, "TXT", spf, spf_note),
    ]
    for key in DkimKey.objects.published().filter(domain=domain).order_by("created_at"):
        state = (
            "current key" if key.retired_at is None else f"retired key, keep until {key.expires_at:%Y-%m-%d %H:%M} UTC"
        )
        records.append(Record(key.record_name, "TXT", key.record_value, f"DKIM ({state})."))
    records.append(
        Record(
            f"_dmarc.{name}",
            "TXT",
            f"v=DMARC1; p=quarantine; adkim=s; aspf=r; rua=mailto:postmaster@{name}",
            "DMARC: receivers file mail that fails both SPF and DKIM for this domain as spam.",
        )
    )
    return records


def discovery_note(domain: Domain) -> str:
    """Where the Pushmail discovery document of ``domain`` is read (docs/protocol.md §2.1)."""
    base = settings.PUSHMAIL_PEERS.get(domain.name) or f"https://{domain.name}"
    return (
        f"Pushmail discovery: {base}{discovery.WELL_KNOWN_PATH} must serve this instance's discovery document "
        f"(point {domain.name}'s A/AAAA records at the web server, or proxy {discovery.WELL_KNOWN_PATH} there); "
        "no DNS record is needed for it."
    )
