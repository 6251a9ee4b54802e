"""``modality add|list|remove``: the allow-list of modalities that may send images."""

from __future__ import annotations

from pathlib import Path

import click

from appliance.cli.options import audit_admin_change, home_database, home_option
from appliance.ingest.modalities import add_modality, list_modalities, remove_modality


@click.group()
def modality() -> None:
    """Manage which modalities (calling AE titles) may send images to the appliance.

    \b
    While the list is empty ANY caller is accepted, so a fresh install works at once.
    Once the first modality is added, only listed AE titles (from their address, if
    one is given) may send. Changes apply to the next association at once, without a
    restart, and are recorded in the audit trail.
    """


@modality.command("add")
@click.argument("ae_title", metavar="AET")
@click.option(
    "--host",
    metavar="ADDR",
    default=None,
    help="Only accept this AE title from this IP address [default: any address].",
)
@click.option("--description", metavar="TEXT", default="", help="e.g. 'CT scanner, room 2'.")
@home_option
def add(ae_title: str, host: str | None, description: str, home: Path | None) -> None:
    """Allow the modality with calling AE title AET (1-16 characters) to send images."""
    db = home_database(home)
    was_open = not list_modalities(db)
    row = add_modality(db, ae_title, host, description)
    audit_admin_change(db, "modality_added", ae_title=row["ae_title"], host=row["host"])
    click.echo(f"Added {row['ae_title']} (from {row['host'] or 'any address'}).")
    if was_open:
        click.echo(
            "The allow-list was empty until now: from now on only listed modalities may send."
        )


@modality.command("list")
@home_option
def list_(home: Path | None) -> None:
    """List the modalities allowed to send images."""
    rows = list_modalities(home_database(home))
    if not rows:
        click.echo(
            "No modality registered: ANY caller is accepted until the first one is added\n"
            "with `neuronova modality add AET --host ADDR`."
        )
        return
    click.echo(f"{'AE TITLE':<17} {'HOST':<40} {'ADDED (UTC)':<20} DESCRIPTION")
    for row in rows:
        added = (row["created_at"] or "")[:19].replace("T", " ")
        host = row["host"] or "any address"
        click.echo(f"{row['ae_title']:<17} {host:<40} {added:<20} {row['description'] or ''}")


@modality.command("remove")
@click.argument("ae_title", metavar="AET")
@home_option
def remove(ae_title: str, home: Path | None) -> None:
    """Stop accepting images from the modality with calling AE title AET."""
    db = home_database(home)
    remove_modality(db, ae_title)
    audit_admin_change(db, "modality_removed", ae_title=ae_title)
    click.echo(f"Removed {ae_title}.")
    if not list_modalities(db):
        click.secho(
            "The allow-list is now empty: ANY caller is accepted again. Add a modality "
            "with `neuronova modality add AET` to restrict it.",
            fg="yellow",
        )
