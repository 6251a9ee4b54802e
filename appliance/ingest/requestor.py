"""The calling side of a DICOM association, read once and passed around as a value."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from pynetdicom.association import Association

# The AE title the appliance's own health probe (appliance.health.probes) calls with: the
# receiver lets it in from loopback, for C-ECHO only.
HEALTH_AE_TITLE = "NEURONOVA-HEALTH"


@dataclass(frozen=True, slots=True)
class Requestor:
    """Who asked for an association: the calling AE title (PS3.8 9.3.2, spaces stripped)
    and the peer's IP address."""

    ae_title: str
    address: str

    @property
    def source(self) -> str:
        """The journal's and the audit trail's name for objects it sends."""
        return f"dicom:{self.ae_title}"

    @classmethod
    def of(cls, assoc: Association) -> Requestor:
        """Read from the association's A-ASSOCIATE-RQ (there from ``EVT_REQUESTED`` on)."""
        requestor = assoc.requestor
        return cls(requestor.primitive.calling_ae_title.strip(), requestor.address)


class Requestors:
    """Each open association's :class:`Requestor`, read at its first use (the request) and
    forgotten with the association."""

    def __init__(self) -> None:
        self._known: weakref.WeakKeyDictionary[Association, Requestor] = weakref.WeakKeyDictionary()

    def of(self, assoc: Association) -> Requestor:
        """The requestor of ``assoc``; only the association's own thread adds its entry."""
        known = self._known.get(assoc)
        if known is None:
            known = self._known[assoc] = Requestor.of(assoc)
        return known
