"""Two Missive sites on loopback for the partner-network bridge test (issue 6 item 4).

Cast:
- the *hospital* (chu-a.test): a copy of the shipped ``conf/`` (listeners moved to free
  ports), ``var/pki`` a copy of the session's dev PKI completed by ``certs init-dev``
  (demo annuaire, key store, organisation signing key), plus an ``apicrypt`` route for
  ``*.apicrypt.test`` toward the partner: ``tls = "verify"``, ``tls_name``, the
  partner's root and person CA as the route's ``anchors`` (or none), ``auth_user``
  and a 0600 ``auth_password_file``; the recipient's entry (an encryption certificate issued by the
  partner's PKI) added to its LDIF annuaire;
- the *partner* (medical.apicrypt.test, "Apicrypt-like"): a separate Missive with its own
  home, spool, audit trail and dev PKI (another root, made by ``init_dev_pki`` in another
  directory; its CA names are the same strings as the hospital's, but other keys), a
  STARTTLS submission listener whose certificate is ``mx.medical.apicrypt.test`` from
  that PKI, AUTH required, one login ``passerelle`` (hash made by ``missive users add``)
  allowed to send as the hospital's sender; its local domain delivers to a Maildir. It
  does not hold the recipient's private key (Apicrypt-like: the doctor's client
  decrypts), so its inbound stage delivers the message still encrypted and marked
  (``unknown_key = "pass-marked"``): the Maildir file holds the bytes that crossed the
  wire, and the test opens them with the recipient's key.

Trust of the recipient's S/MIME certificate: the secure agent validates the
certificates of a route's recipients against ``[trust]`` plus the route's own
``anchors`` (``gateway.relay.route_trust``), as the relay does for the route's TLS peer.
With ``smime_trust="route"`` (the default) the partner's CAs are in the route's
``anchors`` and nowhere else (the person CA is needed there: both dev PKIs use the same
CA names, so the hospital's own intermediate of that name cannot complete the path);
the hospital lists the partner's CRLs in ``trust.crls`` (revocation data, not trust:
revocation is hard-fail). With ``smime_trust="person-ca"``
the hospital also lists the partner's *person* CA in ``trust.anchors``, so that a
recipient certificate is valid without the route's ``anchors`` — it cannot vouch for
the partner's server certificate (another CA), so TLS still depends on the route's
``anchors`` alone (the test of a partner outside the route's anchors).

Preparing the hospital's ``conf/`` and ``var/`` and running ``serve`` (in its own
session, output in a file, stopped by PID) are ``tests/sites.py``'s, as for every demo
site; this module adds what makes the two sites partners.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.serialization import Encoding

from gateway.pki.dev import DevPki, init_dev_pki, load_dev_pki
from gateway.pki.store import load_first_certificate
from tests.peers.ports import free_ports
from tests.sites import (
    CONFIG,
    copy_demo_site,
    edit_config,
    missive,
    prepare_demo_site,
)

SENDER = "alice.martin@chu-a.test"
RECIPIENT = "jean.dupont@medical.apicrypt.test"
PARTNER_MX = "mx.medical.apicrypt.test"
PARTNER_DOMAIN = "medical.apicrypt.test"
AUTH_USER = "passerelle"

SmimeTrust = Literal["route", "person-ca"]


# -- the partner network -----------------------------------------------------------------


@dataclass(frozen=True)
class PartnerSite:
    home: Path
    pki: DevPki
    port: int

    @property
    def maildir(self) -> Path:
        return self.home / "var" / "mail" / RECIPIENT.partition("@")[0]


def make_partner(home: Path, password: str) -> PartnerSite:
    """A second Missive: own home, spool, audit trail and PKI (another root than the
    hospital's: the recipient and the smarthost's certificate), an empty key store and
    annuaire, a users file where ``missive users add`` put ``passerelle``."""
    pki = init_dev_pki(home / "var" / "pki", users=[RECIPIENT], servers=[PARTNER_MX])
    (home / "var" / "keys").mkdir(mode=0o700)
    (home / "var" / "annuaire.ldif").touch()
    (home / "conf").mkdir()
    users = home / "conf" / "users.toml"
    users.touch()
    added = missive(
        home,
        "users",
        "add",
        AUTH_USER,
        "--users-file",
        str(users),
        "--address",
        SENDER,
        stdin=password + "\n",
    )
    assert added.returncode == 0, added.stderr
    [port] = free_ports(1)
    (home / CONFIG).write_text(_partner_toml(home, pki, port), encoding="utf-8")
    return PartnerSite(home, pki, port)


def _partner_toml(home: Path, pki: DevPki, port: int) -> str:
    crls = ", ".join(f'"{pki.crl(ca)}"' for ca in ("root", "personnes", "serveurs"))
    return f"""\
[gateway]
home = "{home}"
hostname = "{PARTNER_MX}"
local_domains = ["{PARTNER_DOMAIN}"]
language = "en"

[tls]
certificate = "{pki.server_cert(PARTNER_MX)}"
private_key = "{pki.server_key(PARTNER_MX)}"

[trust]
anchors = ["{pki.root_cert}"]
intermediates = ["{pki.intermediates}"]
crls = [{crls}]

[[listeners]]
name = "submission"
address = "127.0.0.1:{port}"
kind = "submission"
tls = "starttls"

[auth]
users_file = "conf/users.toml"

[keys]
dir = "var/keys"

[[routes]]
name = "default"
domains = ["*"]
transport = "reject"

[inbound]
deliver_to = "maildir:var/mail"
unknown_key = "pass-marked"
"""


# -- the hospital ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HospitalSite:
    home: Path
    pki: DevPki


def make_hospital_template(home: Path, session_pki: DevPki, partner: PartnerSite) -> Path:
    """The shipped ``conf/`` and ``var/`` as ``certs init-dev`` completes them, plus the
    recipient's annuaire entry (its certificate from the partner's PKI)."""
    prepare_demo_site(home, session_pki=session_pki.directory, free_listeners=False)
    with (home / "var" / "annuaire.ldif").open("a", encoding="ascii") as ldif:
        ldif.write(recipient_ldif(partner.pki))
    return home


def make_hospital(
    home: Path,
    template: Path,
    partner: PartnerSite,
    password: str,
    *,
    route_anchors: bool,
    smime_trust: SmimeTrust = "route",
) -> HospitalSite:
    """A copy of ``template`` with an ``apicrypt`` route to ``partner``."""
    copy_demo_site(template, home)
    secret = home / "conf" / "apicrypt.secret"
    secret.touch(mode=0o600)
    secret.write_text(password + "\n", encoding="utf-8")
    edit_config(home, *_partner_trust_edits(partner.pki, smime_trust))
    toml = home / CONFIG
    toml.write_text(_with_route(toml.read_text(), _apicrypt_route(partner, route_anchors)))
    return HospitalSite(home, load_dev_pki(home / "var" / "pki"))


def _partner_trust_edits(partner: DevPki, smime_trust: SmimeTrust) -> list[tuple[str, str]]:
    """The partner's CRLs; with ``person-ca`` its person CA as an anchor too."""
    partner_crls = "".join(f', "{partner.crl(ca)}"' for ca in ("root", "personnes", "serveurs"))
    shipped = '"var/pki/personnes.crl", "var/pki/serveurs.crl"'
    edits = [(shipped + "]", shipped + partner_crls + "]")]
    if smime_trust == "person-ca":
        shipped_anchors = 'anchors = ["var/pki/root.crt"]'
        anchors = f'anchors = ["var/pki/root.crt", "{partner.ca_cert("personnes")}"]'
        edits.insert(0, (shipped_anchors, anchors))
    return edits


def _apicrypt_route(partner: PartnerSite, route_anchors: bool) -> str:
    # the partner's root for its server certificate (its chain comes in the handshake)
    # and its person CA for its recipients' certificates (an annuaire entry carries no
    # chain): both are this network's own, trusted on this route only
    pki = partner.pki
    anchors = f'["{pki.root_cert}", "{pki.ca_cert("personnes")}"]' if route_anchors else "[]"
    return f"""\
[[routes]]
name = "apicrypt"
domains = ["*.apicrypt.test"]
transport = "smtp"
next_hop = "127.0.0.1:{partner.port}"
tls = "verify"
tls_name = "{PARTNER_MX}"
security = "smime"
anchors = {anchors}
auth_user = "{AUTH_USER}"
auth_password_file = "conf/apicrypt.secret"
fallback = "postal"

"""


def _with_route(text: str, route: str) -> str:
    """``route`` inserted before the last (default) route: the first match wins."""
    default = text.index('\nname = "default"')
    start = text.rindex("[[routes]]", 0, default)
    return text[:start] + route + text[start:]


def recipient_ldif(partner: DevPki) -> str:
    """The recipient's annuaire entry: inetOrgPerson, postal address, encryption cert."""
    der = load_first_certificate(partner.user_cert(RECIPIENT, "enc")).public_bytes(Encoding.DER)
    encoded = base64.b64encode(der).decode("ascii")
    folded = "\n ".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    return f"""
dn: uid=899900000901,ou=people,dc=annuaire,dc=test
objectClass: top
objectClass: person
objectClass: organizationalPerson
objectClass: inetOrgPerson
uid: 899900000901
cn: Jean Dupont
sn: Dupont
givenName: Jean
o: Cabinet medical (fictif, reseau Apicrypt-like)
postalAddress: Cabinet medical$2 rue de l'Exemple
postalCode: 99002
l: Ville-B
mail: {RECIPIENT}
userCertificate;binary:: {folded}
"""
