"""A route's own ``anchors`` (``gateway.relay.route_trust``): trusted on that route only.

The partner network's PKI is a second development PKI made in the test; its user's
encryption certificate is untrusted by the base validator (``[trust]`` of the dev PKI)
and valid through the validator of a route that lists the partner's CAs. The end-to-end
case (secure agent, relay, a second Missive) is ``test_partner_bridge.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from annuaire.ldif_backend import LdifDirectory
from annuaire.lookup import CertificateLookup
from gateway.pki.dev import DevPki, init_dev_pki
from gateway.relay.route_trust import RouteTrust
from gateway.smime.types import CertStatus, Purpose
from gateway.smime.validate import CertificateValidator
from tests.annuaire.directories import raw_records, write_ldif
from tests.annuaire.samples import ATTRIBUTES
from tests.relay.client_helpers import make_route
from tests.relay.test_agent import person

PARTNER_USER = "jean.dupont@medical.apicrypt.test"


@pytest.fixture(scope="module")
def partner(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return init_dev_pki(tmp_path_factory.mktemp("partner-pki"), users=[PARTNER_USER])


def _base(pki: DevPki, partner: DevPki) -> CertificateValidator:
    crls = [pki.crl("personnes"), pki.crl("serveurs"), partner.crl("personnes")]
    return CertificateValidator.from_files([pki.root_cert], [pki.intermediates], crls)


def _partner_certificate(partner: DevPki) -> x509.Certificate:
    return x509.load_pem_x509_certificate(partner.user_cert(PARTNER_USER, "enc").read_bytes())


def _partner_anchors(partner: DevPki) -> tuple[Path, ...]:
    return (partner.root_cert, partner.ca_cert("personnes"))


def test_a_route_without_anchors_gets_the_base_validator(dev_pki: DevPki, partner: DevPki) -> None:
    base = _base(dev_pki, partner)
    assert RouteTrust(base).validator_for(make_route()) is base


def test_the_route_anchors_make_the_partner_certificate_valid_on_that_route_only(
    dev_pki: DevPki, partner: DevPki
) -> None:
    base = _base(dev_pki, partner)
    trust = RouteTrust(base)
    apicrypt = make_route(name="apicrypt", anchors=_partner_anchors(partner))
    certificate = _partner_certificate(partner)

    on_route = trust.validator_for(apicrypt).validate(certificate, purpose=Purpose.SMIME_ENCRYPT)
    elsewhere = trust.validator_for(make_route()).validate(
        certificate, purpose=Purpose.SMIME_ENCRYPT
    )

    assert on_route.valid, on_route.reason
    assert elsewhere.status is not CertStatus.VALID
    assert base.validate(certificate, purpose=Purpose.SMIME_ENCRYPT).status is elsewhere.status


def test_routes_with_the_same_anchors_share_one_validator(dev_pki: DevPki, partner: DevPki) -> None:
    trust = RouteTrust(_base(dev_pki, partner))
    anchors = _partner_anchors(partner)
    first = trust.validator_for(make_route(name="a", anchors=anchors))
    second = trust.validator_for(make_route(name="b", anchors=anchors))
    other = trust.validator_for(make_route(name="c", anchors=(partner.root_cert,)))
    assert first is second
    assert other is not first


async def test_a_lookup_with_the_route_validator_finds_what_the_shared_one_refuses(
    dev_pki: DevPki, partner: DevPki, tmp_path: Path
) -> None:
    certificate = _partner_certificate(partner)
    entry = person(PARTNER_USER, certificate.public_bytes(Encoding.DER))
    directory = LdifDirectory(write_ldif(tmp_path / "a.ldif", raw_records([entry])), ATTRIBUTES)
    base = _base(dev_pki, partner)
    shared = CertificateLookup(directory, base)
    apicrypt = make_route(name="apicrypt", anchors=_partner_anchors(partner))
    routed = shared.with_validator(RouteTrust(base).validator_for(apicrypt))

    assert not (await shared.lookup(PARTNER_USER)).found  # cached as negative there
    found = await routed.lookup(PARTNER_USER)  # its own cache: not the negative answer
    assert found.certificates == (certificate,)
    assert not (await shared.lookup(PARTNER_USER)).found
