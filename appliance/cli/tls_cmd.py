"""``tls show|install``: the certificate nginx serves on the HTTPS port."""

from __future__ import annotations

from pathlib import Path

import click

from appliance.cli.options import home_option, settings_from
from appliance.home import require_initialized
from appliance.security import tls as certs
from appliance.security.tls.files import day

RESTART_HINT = (
    "Restart NeuroNova (or it picks the certificate up at its next start) for nginx to serve it."
)


@click.group()
def tls() -> None:
    """The HTTPS certificate of the web interface (HOME/tls/server.crt and server.key).

    \b
    Until you install one, NeuroNova generates a self-signed certificate at start;
    browsers warn about it. Install a certificate from your clinic's certificate
    authority with `neuronova tls install CERT KEY` (see its --help).
    """


@tls.command("show", short_help="Show the HTTPS certificate: names, issuer, validity.")
@home_option
def show(home: Path | None) -> None:
    """Show the certificate nginx serves: names, issuer, validity and fingerprint."""
    settings = settings_from(home)
    layout = require_initialized(settings)
    info = certs.certificate_info(layout)
    click.echo(f"File:      {certs.cert_file(layout)}")
    click.echo(f"Port:      {settings.web.https_port} (HTTPS)")
    _echo_info(info)
    if info.self_signed:
        click.echo(
            "\nBrowsers warn about self-signed certificates. To install one from your "
            "clinic's CA, see `neuronova tls install --help`."
        )


@tls.command("install", short_help="Install a certificate and key from your clinic's CA.")
@click.argument("cert", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("key", type=click.Path(dir_okay=False, path_type=Path))
@home_option
def install(cert: Path, key: Path, home: Path | None) -> None:
    """Install certificate CERT and its private key KEY for the HTTPS port.

    Both files are checked first (PEM, key matches the certificate, currently valid,
    not a CA certificate, chain in order); nothing changes if a check fails. The
    previous pair is kept as server.crt.bak and server.key.bak.

    \b
    Getting a certificate from your clinic's certificate authority (CA):
      1. Make a key and a signing request on this machine, e.g.
           openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \\
             -keyout server.key -out server.csr -subj "/CN=pacs.clinic.lan" \\
             -addext "subjectAltName=DNS:pacs.clinic.lan,DNS:pacs,IP:10.0.0.5"
         using the names and addresses users type in their browsers.
      2. Send server.csr (never server.key) to IT; ask for a TLS server certificate
         (extended key usage serverAuth) in PEM format, with the intermediate chain.
      3. neuronova tls install server.crt server.key

    \b
    CERT  PEM text ("-----BEGIN CERTIFICATE-----"): the server certificate
          first, then the intermediate CA certificates in order (the one that
          issued the server certificate next); the root CA may be left out.
          Combine files with: cat server.crt intermediate.crt > chain.crt
          DER (.cer/.der):  openssl x509 -inform der -in X.cer -out server.crt
          .pfx/.p12:        openssl pkcs12 -in X.pfx -nokeys -out server.crt
    KEY   PEM private key ("-----BEGIN PRIVATE KEY-----"), not encrypted:
          openssl pkey -in encrypted.key -out server.key
          from .pfx/.p12:   openssl pkcs12 -in X.pfx -nocerts -nodes -out server.key
    """
    layout = require_initialized(settings_from(home))
    info = certs.install_certificate(layout, cert, key)
    click.echo(f"Installed {cert} as {certs.cert_file(layout)}.")
    _echo_info(info)
    click.echo(RESTART_HINT)


def _echo_info(info: certs.CertificateInfo) -> None:
    intermediates = info.chain_length - 1
    chain = f"+ {intermediates} intermediate CA(s)" if intermediates else "only"
    click.echo(f"Type:      {info.kind}")
    click.echo(f"Subject:   {info.subject}")
    click.echo(f"Issuer:    {info.issuer}")
    click.echo(f"Names:     {', '.join(info.names) or '(none)'}")
    click.echo(f"Valid:     {day(info.not_before)} to {day(info.not_after)}")
    click.echo(f"Days left: {info.days_left}")
    click.echo(f"Chain:     server certificate {chain}")
    click.echo(f"SHA-256:   {info.sha256}")
    for warning in info.warnings:
        click.echo(f"Warning: {warning}")
