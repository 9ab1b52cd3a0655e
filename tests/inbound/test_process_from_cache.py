"""What ``gateway.inbound.process`` reuses instead of reading again (session 9, CPU per
message): the From addresses it binds to the signer, through a bounded cache keyed by
every From value in order (never the addresses of another value; long values not
cached), and the verifier's parse of the signed content (only for those very bytes)."""

from __future__ import annotations

from gateway.inbound import process
from gateway.relay.protect import header_fields


def froms(*values: str) -> list[str]:
    block = "".join(f"From: {value}\r\n" for value in values).encode()
    return process._from_addresses(header_fields(block + b"Subject: x\r\n"))


def test_each_value_gets_its_own_addresses_cached_or_not() -> None:
    process._cached_addresses_of.cache_clear()
    first = froms("Claire <claire@b.test>")
    assert first == ["claire@b.test"]
    assert froms("Claire <claire@b.test>") == first
    assert process._cached_addresses_of.cache_info().hits == 1
    assert froms('"bruno@a.test" <claire@b.test>') == ["claire@b.test", "bruno@a.test"]
    assert froms("=?utf-8?q?bruno=40a=2Etest?= <claire@b.test>") == [
        "claire@b.test",
        "bruno@a.test",
    ]
    assert froms("Claire <claire@b.test>", "dan@c.test") == ["claire@b.test", "dan@c.test"]
    assert froms("dan@c.test", "Claire <claire@b.test>") == ["dan@c.test", "claire@b.test"]
    assert froms() == []


def test_a_long_value_is_read_without_the_cache() -> None:
    process._cached_addresses_of.cache_clear()
    many = ", ".join(f"p{n}@b.test" for n in range(100))
    assert froms(many) == [f"p{n}@b.test" for n in range(100)]
    assert process._cached_addresses_of.cache_info().currsize == 0


# -- the verifier's parse of the signed content, reused only for those very bytes --------


def test_the_verifiers_parse_is_used_only_for_the_content_itself() -> None:
    from gateway.smime import mime
    from gateway.smime.types import VerifyResult

    content = b"Content-Type: text/plain\r\n\r\nBonjour.\r\n"
    own = mime.parse_entity(content)
    used = process._signed_content(
        VerifyResult(True, "", content=content, detached=False, content_entity=own)
    )
    assert used.parsed is own and used.canonical and used.data is content

    other = mime.parse_entity(bytes(bytearray(content)))  # equal bytes, another object
    kept_out = process._signed_content(
        VerifyResult(True, "", content=content, detached=False, content_entity=other)
    )
    assert kept_out.parsed is None and not kept_out.canonical  # opaque: not known

    detached = process._signed_content(VerifyResult(True, "", content=content, detached=True))
    assert detached.parsed is None and detached.canonical
