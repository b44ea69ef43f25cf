"""A pool's session persistence as the exchange calls it (portico.persistence.session): the server
a request's cookie names, what the response must carry, and stick-table learning."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from portico.http.headers import Header
from portico.persistence.session import Persistence, StickBinding, Sticky
from portico.persistence.stick import StickTable
from portico.state.memory import MemoryStore

SECRET = b"0123456789abcdef0123456789abcdef"


@dataclass(frozen=True)
class Server:
    name: str


SERVERS = (Server("a"), Server("b"))


def cookie_of(headers: list[Header]) -> bytes:
    (value,) = [v for k, v in headers if k == b"Set-Cookie"]
    return value.split(b";", 1)[0]  # NAME=value, without the attributes


def test_a_new_client_gets_a_cookie_naming_the_server_that_answered() -> None:
    persistence = Persistence(Sticky(b"srv", SECRET, b"; Path=/", None), None)
    response: list[Header] = [(b"Content-Type", b"text/plain")]
    out = persistence.response_headers(response, "b", None, None)
    cookie = cookie_of(out)
    assert cookie.startswith(b"srv=")
    assert response == [(b"Content-Type", b"text/plain")]  # the server's list is left alone
    # the client's next request names that server
    assert persistence.cookie_server([(b"Cookie", b"x=1; " + cookie)], SERVERS) == "b"


def test_a_returning_client_on_its_own_server_gets_no_new_cookie() -> None:
    persistence = Persistence(Sticky(b"srv", SECRET, b"", None), None)
    response: list[Header] = [(b"Content-Type", b"text/plain")]
    assert persistence.response_headers(response, "a", "a", None) is response


def test_a_cookie_naming_another_server_is_replaced_by_the_one_that_answered() -> None:
    persistence = Persistence(Sticky(b"srv", SECRET, b"", None), None)
    out = persistence.response_headers([], "a", "b", None)  # b was gone: a answered
    assert persistence.cookie_server([(b"Cookie", cookie_of(out))], SERVERS) == "a"


def test_prefix_mode_rides_on_the_application_cookie_and_is_taken_off_upstream() -> None:
    persistence = Persistence(Sticky(b"JSESSIONID", SECRET, b"", None, prefix_mode=True), None)
    out = persistence.response_headers([(b"Set-Cookie", b"JSESSIONID=s3; Path=/")], "a", None, None)
    ((_, value),) = out
    session = value.split(b";", 1)[0]
    assert session.startswith(b"JSESSIONID=")
    assert session.endswith(b"~s3")
    request: list[Header] = [(b"Cookie", session)]
    assert persistence.cookie_server(request, SERVERS) == "a"
    assert persistence.request_headers(request) == [(b"Cookie", b"JSESSIONID=s3")]


def test_without_a_cookie_the_request_headers_are_forwarded_as_they_are() -> None:
    persistence = Persistence(Sticky(b"srv", SECRET, b"", None), None)
    request: list[Header] = [(b"Cookie", b"srv=anything")]
    assert persistence.request_headers(request) is request
    assert persistence.cookie_server(request, SERVERS) is None  # not a valid signed value


def test_the_stick_table_learns_the_key_and_the_session_a_server_starts() -> None:
    async def scenario() -> tuple[str | None, str | None, bytes | None]:
        loop = asyncio.get_running_loop()
        table = StickTable(MemoryStore(loop.time), "app", 60.0)
        persistence = Persistence(None, StickBinding(table, "cookie:sid", True))
        key = persistence.stick_key([(b"Cookie", b"sid=k1")], b"/", "10.0.0.1")
        persistence.response_headers([], "a", None, key)
        # a new client: its session starts with the server's Set-Cookie
        none = persistence.stick_key([], b"/", "10.0.0.2")
        persistence.response_headers([(b"Set-Cookie", b"sid=k2; Path=/")], "b", None, none)
        learning = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert len(learning) == 2  # in the background: the response did not wait
        await asyncio.gather(*learning)
        return await persistence.lookup(b"k1"), await persistence.lookup(b"k2"), none

    assert asyncio.run(scenario()) == ("a", "b", None)
