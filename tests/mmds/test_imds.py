"""Mmds.respond and HttpSession: V1/V2 token rules, both header spellings, formats, status codes."""

import pytest

from sparkler.config.mmds import MmdsConfig
from sparkler.mmds.http import HttpSession
from sparkler.mmds.imds import INVALID_TOKEN, NO_TOKEN, GuestRequest, Mmds
from sparkler.mmds.token import TokenAuthority


class Clock:
    def __init__(self):
        self.ms = 1_000_000

    def __call__(self):
        return self.ms


@pytest.fixture
def clock():
    return Clock()


def mmds_with(version="V1", imds_compat=False, clock=None):
    m = Mmds(instance_id="vm1", clock_ms=clock or Clock())
    m.configure(MmdsConfig(network_interfaces=["eth0"], version=version, imds_compat=imds_compat))
    m.store.put({"latest": {"meta-data": {"ami-id": "ami-1", "reservation-id": "r-1"}}, "n": 5})
    return m


def get(m, path, *headers):
    return m.respond(GuestRequest("GET", path, tuple(headers)))


def token(m, ttl="60", header="X-metadata-token-ttl-seconds"):
    r = m.respond(GuestRequest("PUT", "/latest/api/token", ((header, ttl),)))
    assert r.status == 200 and r.content_type == "text/plain"
    assert r.headers == ((header, ttl),)
    return r.body.decode()


def test_imds_catalog_example_text_and_json():
    m = mmds_with()
    assert get(m, "/latest").body == b"meta-data/"
    assert get(m, "/latest/meta-data").body == b"ami-id\nreservation-id"
    r = get(m, "/latest/meta-data", ("Accept", "application/json"))
    assert r.body == b'{"ami-id":"ami-1","reservation-id":"r-1"}' and r.content_type == "application/json"


def test_imds_compat_forces_text():
    m = mmds_with(imds_compat=True)
    r = get(m, "/latest/meta-data", ("accept", "application/json"))
    assert r.content_type == "text/plain" and r.body == b"ami-id\nreservation-id"


@pytest.mark.parametrize("path", ["http://169.254.169.254/latest//meta-data/", "/latest///meta-data"])
def test_imds_absolute_target_and_duplicate_slashes(path):
    assert get(mmds_with(), path).body == b"ami-id\nreservation-id"


def test_imds_missing_path_is_404_with_path():
    r = get(mmds_with(), "/latest/nope")
    assert (r.status, r.body) == (404, b"Resource not found: /latest/nope.")


def test_imds_number_in_text_form_is_501():
    assert get(mmds_with(), "/n").status == 501


def test_imds_empty_uri_is_400():
    assert get(mmds_with(), "http://169.254.169.254").status == 400


def test_imds_other_method_is_405_with_allow():
    r = mmds_with().respond(GuestRequest("POST", "/latest"))
    assert r.status == 405 and ("Allow", "GET, PUT") in r.headers


def test_imds_v2_without_token_is_401():
    r = get(mmds_with("V2"), "/latest")
    assert (r.status, r.body.decode()) == (401, NO_TOKEN)


@pytest.mark.parametrize("ttl_header", ["X-metadata-token-ttl-seconds", "x-AWS-ec2-metadata-token-ttl-seconds"])
@pytest.mark.parametrize("token_header", ["X-metadata-token", "X-aws-ec2-metadata-token"])
def test_imds_v2_with_token_either_spelling(ttl_header, token_header):
    m = mmds_with("V2")
    t = token(m, header=ttl_header)
    assert len(t) <= 70
    assert get(m, "/latest", (token_header, t)).body == b"meta-data/"


def test_imds_v2_invalid_and_expired_token_are_401(clock):
    m = mmds_with("V2", clock=clock)
    t = token(m, ttl="1")
    assert get(m, "/latest", ("X-metadata-token", t[:-2] + "AA")).body.decode() == INVALID_TOKEN
    clock.ms += 999
    assert get(m, "/latest", ("X-metadata-token", t)).status == 200
    clock.ms += 1
    assert get(m, "/latest", ("X-metadata-token", t)).status == 401


def test_imds_token_from_another_instance_is_invalid():
    a, b = mmds_with("V2"), mmds_with("V2")
    assert get(b, "/latest", ("X-metadata-token", token(a))).status == 401


def test_imds_v1_serves_without_token_and_counts():
    m = mmds_with("V1")
    assert get(m, "/latest").status == 200
    assert get(m, "/latest", ("X-metadata-token", "junk")).status == 200
    assert (m.stats.rx_no_token, m.stats.rx_invalid_token) == (1, 1)


@pytest.mark.parametrize("ttl", ["0", "21601", "-1", "abc", "", "4294967296"])
def test_imds_put_token_bad_ttl_is_400(ttl):
    r = mmds_with("V2").respond(GuestRequest("PUT", "/latest/api/token", (("X-metadata-token-ttl-seconds", ttl),)))
    assert r.status == 400


@pytest.mark.parametrize("ttl", ["1", "21600"])
def test_imds_put_token_ttl_bounds_accepted(ttl):
    token(mmds_with("V2"), ttl=ttl)


def test_imds_put_token_without_ttl_is_400():
    r = mmds_with().respond(GuestRequest("PUT", "/latest/api/token"))
    assert r.status == 400 and b"Token time to live value not found" in r.body


def test_imds_put_token_with_x_forwarded_for_is_400():
    headers = (("X-metadata-token-ttl-seconds", "60"), ("x-forwarded-FOR", "1.2.3.4"))
    r = mmds_with().respond(GuestRequest("PUT", "/latest/api/token", headers))
    assert r.status == 400 and r.body.endswith(b"Key: x-forwarded-FOR")


def test_imds_put_elsewhere_is_404():
    r = mmds_with().respond(GuestRequest("PUT", "/latest", (("X-metadata-token-ttl-seconds", "60"),)))
    assert r.status == 404


def test_token_authority_rotates_key_after_limit(monkeypatch):
    import sparkler.mmds.token as tok

    monkeypatch.setattr(tok, "MAX_TOKENS_PER_KEY", 2)
    ta = TokenAuthority("x")
    first = ta.generate(60)
    ta.generate(60)
    assert ta.is_valid(first)
    ta.generate(60)  # third token: new key
    assert not ta.is_valid(first)


def test_http_session_pipelined_requests_bounded_by_budget():
    m = mmds_with()
    s = HttpSession(m)
    s.receive(b"GET /latest HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
    first = s.process(1)
    assert first.count(b"HTTP/1.1 200 ") == 1
    rest = s.process(10_000)
    assert rest.count(b"HTTP/1.1 200 ") == 2


def test_http_session_garbage_is_400_and_closes():
    s = HttpSession(mmds_with())
    s.receive(b"\x00\x01\x02 nonsense\r\n\r\n")
    out = s.process(10_000)
    assert out.startswith(b"HTTP/1.1 400 ") and s.closing
