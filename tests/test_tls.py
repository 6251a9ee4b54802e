"""HTTPS certificates: the generated self-signed one, installing a clinic's one, the CLI."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.cli import ApplianceGroup
from appliance.cli.tls_cmd import RESTART_HINT
from appliance.cli.tls_cmd import tls as tls_group
from appliance.config import load_settings
from appliance.home import init_home
from appliance.layout import HomeLayout
from appliance.security import tls
from appliance.security.tls import describe, files, machine

HOST, FQDN = "pacs", "pacs.clinic.lan"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DAY = dt.timedelta(days=1)
_TRADITIONAL = serialization.PrivateFormat.TraditionalOpenSSL


# -- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture(autouse=True)
def fixed_host(monkeypatch):
    """A fixed host name and clock; no DNS lookups."""
    monkeypatch.setattr(socket, "gethostname", lambda: HOST)
    monkeypatch.setattr(socket, "getfqdn", lambda name="": FQDN)
    monkeypatch.setattr(files, "utcnow", lambda: NOW)


@pytest.fixture
def layout(tmp_path) -> HomeLayout:
    settings = load_settings(tmp_path / "h", environ={})
    init_home(settings)
    layout = HomeLayout(settings.home)
    for path in (tls.cert_file(layout), tls.key_file(layout)):  # start without a certificate
        path.unlink()
    return layout


def test_init_generates_the_certificate(tmp_path):
    settings = load_settings(tmp_path / "h", environ={})
    init_home(settings)
    assert tls.certificate_info(HomeLayout(settings.home)).generated


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key, password: bytes | None = None, fmt=serialization.PrivateFormat.PKCS8) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption)


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def issue(
    cn: str,
    issuer: Issued | None = None,
    *,
    ca: bool = False,
    names: tuple[str, ...] = (FQDN, HOST),
    not_before: dt.datetime = NOW - DAY,
    not_after: dt.datetime = NOW + 365 * DAY,
    server_auth: bool = True,
) -> Issued:
    """A certificate for ``cn``, signed by ``issuer`` (self-signed when None)."""
    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        sans = x509.SubjectAlternativeName([x509.DNSName(n) for n in names])
        builder = builder.add_extension(sans, critical=False)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_auth else ExtendedKeyUsageOID.CLIENT_AUTH
    if not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    return Issued(cert, key)


@pytest.fixture(scope="module")
def pki() -> dict[str, Issued]:
    root = issue("Clinic Root CA", ca=True, names=())
    intermediate = issue("Clinic Issuing CA", root, ca=True, names=())
    leaf = issue(FQDN, intermediate)
    return {"root": root, "intermediate": intermediate, "leaf": leaf}


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the generated certificate -------------------------------------------------------------


def test_generated_certificate_is_a_self_signed_server_certificate(layout):
    assert tls.ensure_certificate(layout) is True
    crt, key = tls.cert_file(layout), tls.key_file(layout)
    assert (crt, key) == (layout.tls_dir / "server.crt", layout.tls_dir / "server.key")
    assert mode(key) == 0o600 and mode(crt) == 0o644
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp256r1"
    assert private.public_key().public_numbers() == cert.public_key().public_numbers()
    cert.verify_directly_issued_by(cert)
    assert cert.signature_hash_algorithm.name == "sha256"
    assert cert.not_valid_after_utc - cert.not_valid_before_utc >= 825 * DAY
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == HOST
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {HOST, FQDN, "localhost"} <= set(sans.get_values_for_type(x509.DNSName))
    ips = set(sans.get_values_for_type(x509.IPAddress))
    assert {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")} <= ips
    assert set(tls.interface_addresses()) <= ips
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert ext.get_extension_for_class(x509.KeyUsage).value.digital_signature is True
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_generated_certificate_is_described_as_generated(layout):
    tls.ensure_certificate(layout)
    info = tls.certificate_info(layout)
    assert info.self_signed and info.generated
    assert info.kind == "self-signed (generated by NeuroNova)"
    assert info.days_left == 825
    assert {"localhost", "127.0.0.1", "::1", HOST, FQDN} <= set(info.names)
    assert info.warnings == []
    assert len(info.sha256.split(":")) == 32


def test_real_host_name_is_in_the_generated_certificate(layout, monkeypatch):
    """This machine's own name, unmocked; a machine called localhost adds no name."""
    monkeypatch.undo()
    real = socket.gethostname().lower()
    monkeypatch.setattr(socket, "getfqdn", lambda name="": real)
    expected = [] if real in machine._LOOPBACK_NAMES else [real]
    assert tls.host_names() == expected
    tls.ensure_certificate(layout)
    assert set(expected) <= set(tls.certificate_info(layout).names)


@pytest.mark.parametrize(
    ("hostname", "fqdn", "expected"),
    [
        ("PACS", "pacs.clinic.lan.", ["pacs", "pacs.clinic.lan"]),
        ("pacs", "pacs", ["pacs"]),
        ("pacs", "localhost", ["pacs"]),
        ("pacs", "10.0.0.5", ["pacs"]),
    ],
)
def test_host_names(monkeypatch, hostname, fqdn, expected):
    monkeypatch.setattr(socket, "gethostname", lambda: hostname)
    monkeypatch.setattr(socket, "getfqdn", lambda name="": fqdn)
    assert tls.host_names() == expected


def test_ensure_is_idempotent(layout):
    assert tls.ensure_certificate(layout) is True
    before = tls.cert_file(layout).read_bytes(), tls.key_file(layout).read_bytes()
    assert tls.ensure_certificate(layout) is False
    assert (tls.cert_file(layout).read_bytes(), tls.key_file(layout).read_bytes()) == before


def test_ensure_replaces_an_expired_generated_certificate(layout, monkeypatch):
    tls.ensure_certificate(layout)
    before = tls.cert_file(layout).read_bytes()
    monkeypatch.setattr(files, "utcnow", lambda: NOW + 900 * DAY)
    assert tls.ensure_certificate(layout) is True
    assert tls.cert_file(layout).read_bytes() != before


def test_ensure_never_replaces_an_installed_certificate(layout, pki):
    expired = issue(FQDN, pki["intermediate"], not_after=NOW - DAY, not_before=NOW - 9 * DAY)
    tls.cert_file(layout).write_bytes(pem(expired.cert))
    tls.key_file(layout).write_bytes(key_pem(expired.key))
    assert tls.ensure_certificate(layout) is False
    assert tls.cert_file(layout).read_bytes() == pem(expired.cert)


def test_ensure_refuses_half_a_pair(layout):
    tls.cert_file(layout).write_bytes(b"x")
    with pytest.raises(tls.TLSError) as err:
        tls.ensure_certificate(layout)
    crt, key = tls.cert_file(layout), tls.key_file(layout)
    assert str(err.value) == (
        f"{crt} exists but {key} is missing; install a matching pair with "
        f"`neuronova tls install CERT KEY`, or delete {crt} to let NeuroNova "
        "generate a self-signed certificate."
    )


def test_generated_certificate_serves_tls_on_loopback(layout):
    """A real handshake on 127.0.0.1: a client trusting server.crt accepts both names."""
    tls.ensure_certificate(layout)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tls.cert_file(layout), tls.key_file(layout))
    client_ctx = ssl.create_default_context(cafile=str(tls.cert_file(layout)))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            for _ in range(2):
                conn, _ = listener.accept()
                with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                    tls_conn.sendall(b"ok")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        for name in ("localhost", "127.0.0.1"):
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                client_ctx.wrap_socket(raw, server_hostname=name) as conn,
            ):
                assert conn.recv(2) == b"ok"
        thread.join(5)


FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     +-- 127.0.0.0/8 2 0 2
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
Local:
           |-- 192.0.2.2
              /32 host LOCAL
"""

IF_INET6 = """fd000000000000000000000000000002 04 40 00 82     eth0
00000000000000000000000000000001 01 80 10 80       lo
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
"""


def test_interface_addresses_are_read_from_proc(monkeypatch, tmp_path):
    monkeypatch.setattr(machine, "_FIB_TRIE", write(tmp_path, "fib_trie", FIB_TRIE.encode()))
    monkeypatch.setattr(machine, "_IF_INET6", write(tmp_path, "if_inet6", IF_INET6.encode()))
    assert [str(a) for a in tls.interface_addresses()] == [
        "127.0.0.1",
        "192.0.2.2",
        "fd00::2",
        "::1",
    ]


# -- installing a certificate --------------------------------------------------------------


def test_install_accepts_a_chain_and_keeps_a_backup(layout, pki, tmp_path):
    tls.ensure_certificate(layout)
    old = tls.cert_file(layout).read_bytes(), tls.key_file(layout).read_bytes()
    chain = pem(pki["leaf"].cert, pki["intermediate"].cert)
    cert_path = write(tmp_path, "chain.crt", chain)
    key_path = write(tmp_path, "server.key", key_pem(pki["leaf"].key, fmt=_TRADITIONAL))

    info = tls.install_certificate(layout, cert_path, key_path)

    assert info.subject == f"CN={FQDN}" and info.issuer == "CN=Clinic Issuing CA"
    assert not info.self_signed and not info.generated and info.chain_length == 2
    assert info.kind == "issued by CN=Clinic Issuing CA"
    assert info.names == [FQDN, HOST] and info.days_left == 365 and info.warnings == []
    assert tls.cert_file(layout).read_bytes() == chain
    installed_key = serialization.load_pem_private_key(tls.key_file(layout).read_bytes(), None)
    assert installed_key.private_numbers() == pki["leaf"].key.private_numbers()
    assert mode(tls.key_file(layout)) == 0o600 and mode(tls.cert_file(layout)) == 0o644
    crt_bak = layout.tls_dir / "server.crt.bak"
    key_bak = layout.tls_dir / "server.key.bak"
    assert (crt_bak.read_bytes(), key_bak.read_bytes()) == old
    assert mode(key_bak) == 0o600
    assert tls.certificate_info(layout) == info
    assert tls.ensure_certificate(layout) is False


def test_install_warns_about_expiry_and_foreign_names(layout, pki, tmp_path):
    other = issue(
        "www.example.org",
        pki["intermediate"],
        names=("www.example.org", "*.example.org"),
        not_after=NOW + 10 * DAY,
    )
    info = tls.install_certificate(
        layout,
        write(tmp_path, "c.pem", pem(other.cert)),
        write(tmp_path, "k.pem", key_pem(other.key)),
    )
    expiry = (NOW + 10 * DAY).strftime("%Y-%m-%d %H:%M UTC")
    assert info.warnings == [
        f"the certificate expires in 10 days ({expiry}); "
        "ask your certificate authority for a renewal.",
        f"its names (www.example.org, *.example.org) do not include this machine's name "
        f"({HOST} / {FQDN}); browsers will warn unless users reach it by one of the listed names.",
    ]


def test_wildcard_names_match_one_label(layout, pki, tmp_path):
    wild = issue("*.clinic.lan", pki["intermediate"], names=("*.clinic.lan",))
    info = tls.install_certificate(
        layout,
        write(tmp_path, "c.pem", pem(wild.cert)),
        write(tmp_path, "k.pem", key_pem(wild.key)),
    )
    assert info.warnings == []
    assert not describe._name_matches("*.clinic.lan", "a.b.clinic.lan")
    assert not describe._name_matches("*.clinic.lan", "clinic.lan")


def _refusal_cases(pki: dict[str, Issued]) -> dict[str, tuple[bytes, bytes, str]]:
    leaf, intermediate = pki["leaf"], pki["intermediate"]
    expired = issue(FQDN, intermediate, not_before=NOW - 400 * DAY, not_after=NOW - DAY)
    future = issue(FQDN, intermediate, not_before=NOW + 10 * DAY)
    client = issue(FQDN, intermediate, server_auth=False)
    ca = intermediate
    day = "%Y-%m-%d %H:%M UTC"
    good_key = key_pem(leaf.key)
    return {
        "mismatched key": (
            pem(leaf.cert),
            key_pem(new_key()),
            "{key}: this private key does not match the certificate in {cert}; "
            "give the key that was made together with the certificate signing request.",
        ),
        "chain in the wrong order": (
            pem(intermediate.cert, leaf.cert),
            good_key,
            "{cert}: the key {key} belongs to certificate #2 in this file, not the first; "
            "put the server certificate first, then the intermediate CA certificates.",
        ),
        "unrelated second certificate": (
            pem(leaf.cert, pki["root"].cert),
            good_key,
            "{cert}: certificate #2 did not issue certificate #1; order the file as: server "
            "certificate, then the CA that issued it, then that CA's issuer (the root may be "
            "left out).",
        ),
        "expired": (
            pem(expired.cert),
            key_pem(expired.key),
            f"{{cert}}: the certificate expired on {(NOW - DAY).strftime(day)}; "
            "ask your certificate authority for a renewed one.",
        ),
        "not yet valid": (
            pem(future.cert),
            key_pem(future.key),
            f"{{cert}}: the certificate is not valid until {(NOW + 10 * DAY).strftime(day)} "
            f"(this machine's clock says {NOW.strftime(day)}); check the clock, or install it "
            "then.",
        ),
        "CA certificate": (
            pem(ca.cert),
            key_pem(ca.key),
            "{cert}: the first certificate is a CA certificate (BasicConstraints CA:TRUE); "
            "install the server certificate the CA issued, not the CA's own certificate.",
        ),
        "self-signed CA certificate": (
            pem(pki["root"].cert),
            key_pem(pki["root"].key),
            "{cert}: this self-signed certificate is marked as a CA (BasicConstraints "
            "CA:TRUE), as `openssl req -x509` makes it by default; remake it adding "
            "`-addext basicConstraints=critical,CA:FALSE`, or get a server certificate "
            "from your clinic's CA.",
        ),
        "client certificate": (
            pem(client.cert),
            key_pem(client.key),
            "{cert}: the certificate is not for TLS servers (its extended key usage lacks "
            "serverAuth); ask your CA for a TLS server certificate.",
        ),
        "garbage certificate": (
            b"this is not a certificate\n",
            good_key,
            "{cert}: not a PEM certificate (no valid '-----BEGIN CERTIFICATE-----' block). "
            "If it is binary DER, convert it: `openssl x509 -inform der -in {cert} -out "
            "server.crt`; from a .pfx/.p12 file: `openssl pkcs12 -in FILE -nokeys -out "
            "server.crt`.",
        ),
        "DER certificate": (
            leaf.cert.public_bytes(serialization.Encoding.DER),
            good_key,
            "{cert}: not a PEM certificate (no valid '-----BEGIN CERTIFICATE-----' block). "
            "If it is binary DER, convert it: `openssl x509 -inform der -in {cert} -out "
            "server.crt`; from a .pfx/.p12 file: `openssl pkcs12 -in FILE -nokeys -out "
            "server.crt`.",
        ),
        "garbage key": (
            pem(leaf.cert),
            b"-----BEGIN PRIVATE KEY-----\nbm9wZQ==\n-----END PRIVATE KEY-----\n",
            "{key}: not a PEM private key (no valid '-----BEGIN ... PRIVATE KEY-----' block). "
            "If it is binary DER, convert it: `openssl pkey -inform der -in {key} -out "
            "server.key`.",
        ),
        "encrypted PKCS#8 key": (
            pem(leaf.cert),
            key_pem(leaf.key, b"secret"),
            "{key}: the key is encrypted; decrypt it with `openssl pkey -in {key} -out "
            "plain.key` and install plain.key (nginx starts unattended and cannot ask for a "
            "passphrase).",
        ),
        "encrypted traditional key": (
            pem(leaf.cert),
            key_pem(leaf.key, b"secret", _TRADITIONAL),
            "{key}: the key is encrypted; decrypt it with `openssl pkey -in {key} -out "
            "plain.key` and install plain.key (nginx starts unattended and cannot ask for a "
            "passphrase).",
        ),
        "arguments swapped": (
            good_key,
            pem(leaf.cert),
            "{cert}: holds a private key, not a certificate; give the certificate first, "
            "then the key: `neuronova tls install CERT KEY`.",
        ),
    }


REFUSALS = [
    "mismatched key",
    "chain in the wrong order",
    "unrelated second certificate",
    "expired",
    "not yet valid",
    "CA certificate",
    "self-signed CA certificate",
    "client certificate",
    "garbage certificate",
    "DER certificate",
    "garbage key",
    "encrypted PKCS#8 key",
    "encrypted traditional key",
    "arguments swapped",
]


@pytest.mark.parametrize("case", REFUSALS)
def test_install_refuses_and_touches_nothing(layout, pki, tmp_path, case):
    tls.ensure_certificate(layout)
    before = sorted((p.name, p.read_bytes()) for p in layout.tls_dir.iterdir())
    cert_data, key_data, message = _refusal_cases(pki)[case]
    cert_path = write(tmp_path, "given.crt", cert_data)
    key_path = write(tmp_path, "given.key", key_data)
    with pytest.raises(tls.TLSError) as err:
        tls.install_certificate(layout, cert_path, key_path)
    assert str(err.value) == message.format(cert=cert_path, key=key_path)
    assert sorted((p.name, p.read_bytes()) for p in layout.tls_dir.iterdir()) == before


def test_install_names_a_missing_file(layout, pki, tmp_path):
    key_path = write(tmp_path, "k.pem", key_pem(pki["leaf"].key))
    with pytest.raises(tls.TLSError) as err:
        tls.install_certificate(layout, tmp_path / "nope.crt", key_path)
    assert (
        str(err.value)
        == f"{tmp_path / 'nope.crt'}: no such file; give the path of the certificate."
    )


def test_certificate_info_without_a_certificate(layout):
    with pytest.raises(tls.TLSError) as err:
        tls.certificate_info(layout)
    assert str(err.value) == (
        f"{tls.cert_file(layout)}: no certificate yet; `neuronova run` generates a self-signed "
        "one at start, or install your own with `neuronova tls install CERT KEY`."
    )


# -- the command line --------------------------------------------------------------------


@pytest.fixture
def cli() -> click.Group:
    root = ApplianceGroup(name="neuronova")
    root.add_command(tls_group)
    return root


def run(cli: click.Group, *args: str):
    return CliRunner().invoke(cli, list(args))


def test_cli_show_describes_the_generated_certificate(cli, layout):
    tls.ensure_certificate(layout)
    result = run(cli, "tls", "show", "--home", str(layout.home))
    assert result.exit_code == 0, result.output
    assert "Type:      self-signed (generated by NeuroNova)" in result.output
    assert "Port:      8443 (HTTPS)" in result.output
    assert "localhost" in result.output and "127.0.0.1" in result.output
    assert "neuronova tls install --help" in result.output


def test_cli_install_prints_info_and_restart_hint(cli, layout, pki, tmp_path):
    other = issue("www.example.org", pki["intermediate"], names=("www.example.org",))
    cert_path = write(tmp_path, "c.pem", pem(other.cert, pki["intermediate"].cert))
    key_path = write(tmp_path, "k.pem", key_pem(other.key))
    result = run(cli, "tls", "install", str(cert_path), str(key_path), "--home", str(layout.home))
    assert result.exit_code == 0, result.output
    assert "Type:      issued by CN=Clinic Issuing CA" in result.output
    assert "Chain:     server certificate + 1 intermediate CA(s)" in result.output
    assert "Warning: its names (www.example.org) do not include" in result.output
    assert result.output.rstrip().endswith(RESTART_HINT)
    assert RESTART_HINT == (
        "Restart NeuroNova (or it picks the certificate up at its next start) "
        "for nginx to serve it."
    )


def test_cli_install_reports_errors_without_traceback(cli, layout, pki, tmp_path):
    cert_path = write(tmp_path, "c.pem", pem(pki["leaf"].cert))
    key_path = write(tmp_path, "k.pem", key_pem(new_key()))
    result = run(cli, "tls", "install", str(cert_path), str(key_path), "--home", str(layout.home))
    assert result.exit_code == 1
    assert f"Error: {key_path}: this private key does not match" in result.output
    assert "Traceback" not in result.output
    assert not tls.cert_file(layout).exists()


def test_cli_requires_an_initialized_home(cli, tmp_path):
    result = run(cli, "tls", "show", "--home", str(tmp_path / "empty"))
    assert result.exit_code == 1
    assert "is not a NeuroNova home yet" in result.output


def test_cli_help_teaches_how_to_get_a_certificate(cli):
    result = run(cli, "tls", "install", "--help")
    assert result.exit_code == 0
    for text in ("openssl req -new", "server certificate", "intermediate", "pkcs12", "PEM"):
        assert text in result.output
    assert "server.crt.bak" in result.output
