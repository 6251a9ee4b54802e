"""The audit page's event filter offers exactly the events the server records."""

from __future__ import annotations

import re

from appliance.security import audit
from tests.support.paths import REPO

AUDIT_PAGE = REPO / "frontend" / "src" / "pages" / "AdminAudit.tsx"


def test_the_audit_page_filters_by_every_event_the_server_records():
    listed = re.search(r"AUDIT_EVENTS = \[(.*?)\];", AUDIT_PAGE.read_text(), re.DOTALL)
    assert listed, f"AUDIT_EVENTS not found in {AUDIT_PAGE}"
    names = re.findall(r"'([a-z_]+)'", listed.group(1))
    assert len(names) == len(set(names))
    assert set(names) == set(audit.EVENTS)
