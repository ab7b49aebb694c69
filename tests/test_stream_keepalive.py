"""A finished stream hands its connection back, and a connection the server closed while idle is not reused.

vllm bench serve keeps its connections; a client that opened one per request paid a connect and a
name lookup inside every TTFT, and made the server accept one per request.
"""

from __future__ import annotations

import gevent
import pytest

from scenarios.openai_stream import Timeouts, make_client, stream_request

BODY = {"model": "null", "prompt": "a b c", "max_tokens": 16, "stream": True,
        "stream_options": {"include_usage": True}}


@pytest.fixture
def short_keepalive_server(null_server):
    """The null server closing connections idle for 0.3 s (vLLM's uvicorn closes them after 5 s)."""
    return null_server(keepalive_s=0.3)


def _counting_client(url: str):  # noqa: ANN202
    client = make_client(url, Timeouts())
    pool = client._connection_pool  # noqa: SLF001 - counting the sockets it opens is the point
    opened = []
    create = pool._create_socket  # noqa: SLF001

    def counted(*a, **k):  # noqa: ANN002, ANN003, ANN202
        opened.append(1)
        return create(*a, **k)

    pool._create_socket = counted  # noqa: SLF001
    return client, opened


def test_requests_back_to_back_share_one_connection(short_keepalive_server):
    client, opened = _counting_client(short_keepalive_server.url)
    try:
        results = [stream_request(client, "/v1/completions", BODY, Timeouts()) for _ in range(5)]
    finally:
        client.close()
    assert all(r.ok and r.token_events == r.completion_tokens == 16 for r in results)
    assert len(opened) == 1


def test_a_connection_closed_while_idle_is_replaced_not_failed(short_keepalive_server):
    client, opened = _counting_client(short_keepalive_server.url)
    try:
        results = []
        for _ in range(3):
            results.append(stream_request(client, "/v1/completions", BODY, Timeouts()))
            gevent.sleep(0.8)  # past the server's keep-alive: it closes the connection
    finally:
        client.close()
    assert [r.error_kind for r in results] == [None, None, None] and all(r.ok for r in results)
    assert len(opened) == 3
