"""The user's creating line and the API it uses, from the Python agent's frames (no server)."""

from tlsprof.analysis.creation import api_of, place, place_text, user_frame


def frames(*spec):
    return [{"file": f, "line": n, "function": fn} for f, n, fn in spec]


ASYNCIO = frames(
    ("/usr/lib/python3.11/ssl.py", 770, "create_default_context"),
    ("/srv/app/server.py", 31, "make_context"),
    ("/srv/app/server.py", 58, "handle"),
    ("/usr/lib/python3.11/asyncio/events.py", 80, "_run"),
)
REQUESTS = frames(
    ("/usr/lib/python3.11/ssl.py", 770, "create_default_context"),
    ("/venv/lib/python3.11/site-packages/urllib3/util/ssl_.py", 290, "create_urllib3_context"),
    ("/venv/lib/python3.11/site-packages/requests/adapters.py", 500, "send"),
    ("/srv/app/poller.py", 12, "fetch"),
    ("/srv/app/poller.py", 40, "main"),
)
PYOPENSSL = frames(
    ("/usr/lib/python3/dist-packages/OpenSSL/SSL.py", 700, "__init__"), ("/srv/app/tw.py", 20, "getContext")
)
AIOHTTP = frames(
    ("/venv/site-packages/aiohttp/connector.py", 900, "_make_ssl_context"), ("/srv/app/crawl.py", 7, "get")
)


def test_user_frame_skips_stdlib_and_http_libraries():
    assert user_frame(ASYNCIO)["line"] == 31
    assert user_frame(REQUESTS)["file"] == "/srv/app/poller.py" and user_frame(REQUESTS)["line"] == 12
    assert user_frame([]) is None


def test_api_is_the_library_on_the_creating_path():
    assert api_of(ASYNCIO) == "ssl"
    assert api_of(REQUESTS) == "urllib3/requests"
    assert api_of(PYOPENSSL) == "pyOpenSSL"
    assert api_of(AIOHTTP) == "aiohttp"
    assert api_of(None) == "C"


def test_place_takes_the_most_common_line_and_names_its_caller():
    entries = [{"python": {"created_by": REQUESTS}}] * 3 + [{"python": {"created_by": ASYNCIO}}, {"id": "ctx-9"}]
    where = place(entries)
    assert (where["line"], where["function"], where["objects"], where["of"]) == (12, "fetch", 3, 5)
    assert where["caller"] == {"file": "/srv/app/poller.py", "line": 40, "function": "main"}
    assert where["api"] == "urllib3/requests"
    assert place_text(where) == "/srv/app/poller.py:12 in fetch, called from main (line 40)"
    assert place([{"id": "ctx-1"}]) is None
