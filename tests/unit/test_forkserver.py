"""The fork server's argument rendering: descriptors numbered as the worker will see them."""

from __future__ import annotations

from portico.forkserver import render


def test_descriptor_references_become_the_receivers_numbers() -> None:
    argv = ["--channel", 0, "--user", "nobody:65534:65534", "--listen", ("web=", 1)]
    assert render(argv, [7, 12]) == [
        "--channel",
        "7",
        "--user",
        "nobody:65534:65534",
        "--listen",
        "web=12",
    ]


def test_a_request_decoded_from_json_renders_the_same() -> None:
    # a tuple travels as a JSON list
    assert render(["--listen", ["web=", 0]], [5]) == ["--listen", "web=5"]
