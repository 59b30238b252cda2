"""The "Session IDs" contentview, rendered by the installed mitmproxy (11.x legacy View or 12.x
Contentview), as mitmweb and the console would pick it."""

from __future__ import annotations

import importlib
import importlib.metadata
import json

import pytest
from mitmproxy import contentviews
from mitmproxy.test import taddons, tflow

from agent_session_ids.view import contentview as cv

LABEL = "fix-login-bug-4f2a9c1d"
SESSION_ID = "0198c2d0-7b1e-7c3a-9f00-5e6d4f2a9c1d"
SESSION_FILE = "/home/u/.pi/agent/sessions/--work--/2025-01-01T00-00-00_0198c2d0.jsonl"
FILTER = "~d '^openrouter\\.ai$' & ~u '^[a-z]+://[^/]+/api/v1/chat/completions$'"


def metadata(**over) -> dict:
    meta = {
        "session": {
            "id": SESSION_ID,
            "label": LABEL,
            "trace_uuid": "6f1c7c2e-1111-5222-8333-944455556666",
            "name": "fix login bug",
            "agent": "pi",
            "file": SESSION_FILE,
            "source": "request x-session-id header",
            "fallback": False,
        },
        "process": {"pid": 4242, "comm": "pi", "cwd": "/work/project", "started_at": 1736000000.5},
        "rules": [{"name": "openrouter", "file": "rules/openrouter.yaml:3", "match": FILTER}],
        "changes": [
            {"rule": "openrouter", "target": "body.session_id", "before": None, "after": LABEL},
            {"rule": "openrouter", "target": "header x-session-id", "before": "old-id", "after": SESSION_ID},
        ],
        "skipped": [],
    }
    meta.update(over)
    return meta


def json_flow(meta: dict | None):
    f = tflow.tflow(resp=True)
    f.request.host = "openrouter.ai"
    f.request.path = "/api/v1/chat/completions"
    f.request.headers["content-type"] = "application/json"
    f.request.content = json.dumps(
        {"model": "x", "messages": [{"role": "user", "content": "hi"}], "session_id": LABEL}
    ).encode()
    f.response.headers["content-type"] = "application/json"
    f.response.content = b'{"choices": []}'
    if meta is not None:
        f.metadata["session_ids"] = meta
    return f


def show(message, flow, view: str = "auto") -> tuple[str, str]:
    """(name of the view used, its text), as mitmweb gets them."""
    if cv.MITMPROXY_API == 12:
        result = contentviews.prettify_message(message, flow, view_name=view)
        return result.view_name, result.text
    description, lines, error = contentviews.get_message_content_view(view, message, flow)
    assert error is None, error
    text = cv.to_text(list(lines))
    if view.lower() == "auto":  # 11.x: the auto view does not say whom it picked
        best = max(
            contentviews.views,
            key=lambda v: v.render_priority(
                message.content, content_type="application/json", flow=flow, http_message=message
            ),
        )
        return best.name, text
    return contentviews.get(view).name, text


def registered() -> list:
    if cv.MITMPROXY_API == 12:
        return [v for v in contentviews.registry.values() if v.name == cv.NAME]
    return [v for v in contentviews.views if v.name == cv.NAME]


@pytest.fixture
def view():
    with taddons.context():  # 12.x reads ctx.options when it builds the view's metadata
        cv.register()
        yield
        cv.unregister()


def test_feature_detection_matches_installed_mitmproxy():
    # the installed release says which API to expect, not the attribute the detection itself reads
    major = int(importlib.metadata.version("mitmproxy").split(".")[0])
    assert major >= 11
    expected_api = 12 if major >= 12 else 11
    assert expected_api == cv.MITMPROXY_API
    base = contentviews.Contentview if major >= 12 else contentviews.View
    assert base in cv.SessionIdsView.__mro__  # 12's Contentview is a Protocol: no issubclass()


def test_default_view_of_a_rewritten_request_shows_before_and_after(view):
    f = json_flow(metadata())
    name, text = show(f.request, f)
    assert name == cv.NAME
    assert f"body.session_id: (not set)  →  {LABEL}   (rule openrouter)" in text
    assert f"header x-session-id: old-id  →  {SESSION_ID}   (rule openrouter)" in text
    assert "openrouter  rules/openrouter.yaml:3" in text
    assert f"filter: {FILTER}" in text


def test_view_shows_how_the_session_was_resolved(view):
    f = json_flow(metadata())
    _, text = show(f.request, f)
    lines = [line.strip() for line in text.splitlines()]
    for key, value in [
        ("agent", "pi"),
        ("id", SESSION_ID),
        ("label", LABEL),
        ("name", "fix login bug"),
        ("file", SESSION_FILE),
        ("decided by", "request x-session-id header"),
        ("fallback ID", "no"),
        ("pid", "4242 (pi)"),
        ("cwd", "/work/project"),
    ]:
        assert any(line.startswith(f"{key}:") and line.endswith(value) for line in lines), (key, text)
    # the body as sent follows the summary, pretty-printed
    assert text.index("Body (as sent)") > text.index("Process")
    assert f'"session_id": "{LABEL}"' in text


def test_skipped_and_failed_flows_show_the_reason(view):
    f = json_flow(metadata(changes=[], skipped=["body.session_id: the body is streamed"], process=None))
    name, text = show(f.request, f)
    assert name == cv.NAME
    assert "Changes: none" in text
    assert "Not rewritten" in text and "- body.session_id: the body is streamed" in text
    assert "no local process found" in text

    f = json_flow(
        {
            "rules": [{"name": "opper", "file": "rules/opper.yaml:2", "match": "~d opper"}],
            "error": "session resolution took too long",
        }
    )
    name, text = show(f.request, f)
    assert name == cv.NAME
    assert "session resolution took too long" in text
    assert "opper  rules/opper.yaml:2" in text


def test_flows_without_metadata_and_responses_keep_their_usual_view(view):
    f = json_flow(None)
    name, _ = show(f.request, f)
    assert name.lower() == "json"
    f = json_flow(metadata())
    name, _ = show(f.response, f)
    assert name.lower() == "json"
    # a request with no body but with metadata still gets the view
    f = json_flow(metadata())
    f.request.content = b""
    name, text = show(f.request, f)
    assert name == cv.NAME and "(empty)" in text


def test_chosen_explicitly_it_never_raises(view):
    f = json_flow(None)
    name, text = show(f.request, f, view=cv.NAME)
    assert name == cv.NAME
    assert "did not touch this request" in text
    f = json_flow({"changes": "garbage", "rules": [None], "session": 5})
    name, text = show(f.request, f, view=cv.NAME)
    assert name == cv.NAME
    assert "could not show this flow" in text
    desc, lines = cv.render(b"\xff\xfe", f, f.request)
    assert lines  # a plain message, not an exception


def test_register_and_unregister_are_idempotent_across_a_reload():
    with taddons.context():
        try:
            cv.register()
            cv.register()
            assert len(registered()) == 1
            fresh = importlib.reload(cv)  # what mitmproxy's hot reload does to the module
            fresh.register()
            assert len(registered()) == 1
            assert type(registered()[0]) is fresh.SessionIdsView
            fresh.unregister()
            fresh.unregister()
            assert registered() == []
        finally:
            cv.unregister()


def test_the_addon_registers_the_view_on_load_and_removes_it_when_done():
    from agent_session_ids.addon import SessionIds

    addon = SessionIds()
    with taddons.context(addon):
        assert len(registered()) == 1
        addon.done()
        assert registered() == []


def test_a_hostile_label_folder_and_process_name_are_shown_as_escapes_in_the_view(view):
    hostile = "\x1b]52;c;SGk=\x07\x1b[2J\x9b31m\u202eevil"
    meta = metadata()
    meta["session"]["label"] = f"label{hostile}"
    meta["process"].update(comm=f"pi{hostile}", cwd=f"/work/{hostile}")
    f = json_flow(meta)
    f.request.content = json.dumps({"model": f"m{hostile}", "messages": []}, ensure_ascii=False).encode()
    _, text = show(f.request, f)
    assert all(line.isprintable() for line in text.splitlines()), text
    assert "label\\x1b]52;c;SGk=\\x07\\x1b[2J\\x9b31m\\u202eevil" in text
