"""``held list|accept|discard``: objects the receiver's overwrite policy held back.

Under ``[dicom] overwrite = same-source`` (the default) or ``never``, the receiver refuses
an object that would replace an instance another source sent, or change the patient of an
archived study: the modality gets a failure status, the object is kept (its spool file
and a row in the journal's ``held`` table) and listed here until an admin decides.
"""

from __future__ import annotations

from pathlib import Path

import click

from appliance.cli.options import audit_admin_change, home_option, settings_from
from appliance.config import Settings
from appliance.health.probes import worker_running
from appliance.home import require_initialized
from appliance.ingest.intake import Ingest
from appliance.jobs.queue import create_queue


def _open(home: Path | None) -> tuple[Settings, Ingest]:
    settings = settings_from(home)
    require_initialized(settings)
    return settings, Ingest(settings, create_queue(settings))


@click.group()
def held() -> None:
    """Objects refused by the overwrite policy, kept until an admin accepts or discards them.

    \b
    [dicom] overwrite in neuronova.toml chooses the policy:
      same-source  an archived instance is replaced only by the AE title that sent it,
                   and no object may change the patient of an archived study (default)
      never        archived instances are never replaced (and patients never change)
      always       anything replaces anything (no object is held)
    """


@held.command("list")
@home_option
def list_(home: Path | None) -> None:
    """List the held objects, oldest first, with the reason each was held."""
    rows = _open(home)[1].journal.held()
    if not rows:
        click.echo("No object is held.")
        return
    for row in rows:
        when = (row["received_at"] or "")[:19].replace("T", " ")
        click.echo(f"{row['id']:>5}  {when}  {row['source']}  SOP {row['sop_uid']}")
        click.echo(f"       {row['reason']}")
    click.echo(
        "Accept one (it replaces what is archived) with `neuronova held accept ID`, "
        "or delete it with `neuronova held discard ID`."
    )


@held.command("accept")
@click.argument("held_id", metavar="ID", type=int)
@home_option
def accept(held_id: int, home: Path | None) -> None:
    """Archive held object ID as if the policy allowed it: it may replace an archived
    instance and change its study's patient name and ID."""
    settings, ingest = _open(home)
    item = ingest.release_held(held_id)
    with ingest.journal.transaction() as db:
        audit_admin_change(db, "held_accepted", held_id=held_id, sop_uid=item.sop_uid)
    when = (
        "the running appliance's worker is storing it now"
        if worker_running(settings)
        else "it will be stored at the next `neuronova run`"
    )
    click.echo(f"Accepted held object {held_id} (SOP {item.sop_uid}); {when}.")


@held.command("discard")
@click.argument("held_id", metavar="ID", type=int)
@home_option
def discard(held_id: int, home: Path | None) -> None:
    """Delete held object ID and its file; what is archived stays as it is."""
    ingest = _open(home)[1]
    row = ingest.discard_held(held_id)
    with ingest.journal.transaction() as db:
        audit_admin_change(db, "held_discarded", held_id=held_id, sop_uid=row["sop_uid"])
    click.echo(f"Discarded held object {held_id} (SOP {row['sop_uid']}).")
