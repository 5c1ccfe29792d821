"""``keyward auth``: sign in to a keyward server with your own registered key."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from keyward.cli.context import AppContext
from keyward.cli.output import emit_json
from keyward.errors import UsageError

if TYPE_CHECKING:
    from keyward.auth.client import ApiClient

pass_app = click.make_pass_decorator(AppContext)


@click.group()
def auth() -> None:
    """Sign in to a keyward server with your registered key (KEYWARD_URL, KEYWARD_KEY)."""


def _api(app: AppContext) -> ApiClient:
    api = app.api()
    if api is None:
        raise UsageError("no keyward server: set KEYWARD_URL (or --url)")
    return api


@auth.command("login")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def auth_login(app: AppContext, as_json: bool) -> None:
    """Trade one signature by KEYWARD_KEY for a session (8 hours by default).

    Later commands use the session instead of signing each request (one touch of a
    FIDO key per session); revoking the key or offboarding the person ends it at once.
    """
    api = _api(app)
    if api.signer is None:
        raise UsageError("set KEYWARD_KEY to the registered key to sign in with")
    session = api.call("POST", "/api/v1/auth/login", {}, sign=True)
    api.sessions.save(
        {
            "url": api.url,
            "token": session["token"],
            "username": session["username"],
            "fingerprint": session["fingerprint"],
            "expires_at": session["expires_at"],
        }
    )
    if as_json:
        emit_json({k: v for k, v in session.items() if k != "token"})
        return
    click.echo(
        f"signed in to {api.url} as {session['username']} with key {session['fingerprint']} "
        f"until {session['expires_at']}"
    )


@auth.command("browser")
@click.argument("code")
@pass_app
def auth_browser(app: AppContext, code: str) -> None:
    """Sign in the web page showing CODE, as yourself (a request signed by KEYWARD_KEY).

    Confirm only a code your own browser shows you at this server's /web/ page: whoever
    shows you a code gets a session as you when you confirm it.
    """
    api = _api(app)
    if api.signer is None:
        raise UsageError("set KEYWARD_KEY to the registered key to sign in with")
    me = api.call("POST", "/api/v1/auth/browser", {"code": code}, sign=True)
    click.echo(
        f"signed in the browser showing {code.strip()} to {api.url} as {me['username']} "
        f"with key {me['fingerprint']}"
    )


@auth.command("whoami")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def auth_whoami(app: AppContext, as_json: bool) -> None:
    """Who the server says you are, and what you may do there."""
    me = _api(app).call("GET", "/api/v1/whoami")
    if as_json:
        emit_json(me)
        return
    click.echo(f"{me['username']} (key {me['fingerprint']}, by {me['via']})")
    click.echo(f"roles: {', '.join(me['roles']) or '-'}")
    kinds = [k for k in ("admin", "auditor") if me[k]]
    click.echo(f"administrator/auditor: {', '.join(kinds) or 'no'}")
    click.echo(f"approves requests for: {', '.join(me['approves']) or '-'}")
    if me.get("session_expires_at"):
        click.echo(f"session until: {me['session_expires_at']}")


@auth.command("logout")
@pass_app
def auth_logout(app: AppContext) -> None:
    """Forget the stored session for this server (later requests are signed again)."""
    removed = _api(app).sessions.remove()
    click.echo("signed out" if removed else "no stored session")


def register(cli: click.Group) -> None:
    cli.add_command(auth)
