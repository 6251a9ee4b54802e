"""``user add|list|disable|enable|passwd``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from appliance.cli.options import home_database, home_option
from appliance.roles import ROLES
from appliance.security import users as accounts
from appliance.security.sessions import revoke_user_sessions


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise click.UsageError("--password-stdin was given but standard input was empty")
        return password
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


password_stdin = click.option(
    "--password-stdin", is_flag=True, help="Read the password from standard input (for scripts)."
)


@click.group()
def user() -> None:
    """Manage the people who can log in (roles: admin, radiologist, technologist)."""


@user.command("add")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(ROLES),
    required=True,
    help="admin: everything; radiologist: read and share; technologist: read and upload.",
)
@password_stdin
@home_option
def add(name: str, role: str, password_stdin: bool, home: Path | None) -> None:
    """Create user NAME with a role; asks for the password (at least 10 characters)."""
    db = home_database(home)
    accounts.validate_username(name)
    if accounts.get_user(db, name):
        raise click.ClickException(f"user {name!r} already exists; use `neuronova user passwd`.")
    accounts.create_user(db, name, role, _read_password(password_stdin))
    click.echo(f"Created {role} {name}.")


@user.command("list")
@home_option
def list_(home: Path | None) -> None:
    """List users with their role, state and last login."""
    rows = accounts.list_users(home_database(home))
    click.echo(f"{'USER':<24} {'ROLE':<13} {'STATE':<9} LAST LOGIN")
    for row in rows:
        # pending: created by single sign-on, waiting for `user enable` (an admin's approval)
        state = "pending" if row["pending"] else "disabled" if row["disabled"] else "active"
        click.echo(f"{row['username']:<24} {row['role']:<13} {state:<9} {row['last_login'] or '-'}")


@user.command("disable")
@click.argument("name")
@home_option
def disable(name: str, home: Path | None) -> None:
    """Stop NAME from logging in; their open sessions and share links end at once."""
    db = home_database(home)
    target = accounts.require_user(db, name)
    if (
        target["role"] == "admin"
        and not target["disabled"]
        and accounts.count_active_admins(db) <= 1
    ):
        raise click.ClickException(f"{name} is the last active admin; add another admin first.")
    accounts.update_user(db, name, disabled=True)
    revoke_user_sessions(db, name, "disabled with the CLI")
    click.echo(f"Disabled {name}; their open sessions have ended and share links are revoked.")


@user.command("enable")
@click.argument("name")
@home_option
def enable(name: str, home: Path | None) -> None:
    """Let a disabled user log in again."""
    accounts.update_user(home_database(home), name, disabled=False)
    click.echo(f"Enabled {name}.")


@user.command("passwd")
@click.argument("name")
@password_stdin
@home_option
def passwd(name: str, password_stdin: bool, home: Path | None) -> None:
    """Set a new password for NAME."""
    db = home_database(home)
    accounts.require_user(db, name)
    accounts.update_user(db, name, password=_read_password(password_stdin))
    revoke_user_sessions(db, name, "password changed with the CLI")
    click.echo(f"Password changed for {name}; their open sessions have ended.")
