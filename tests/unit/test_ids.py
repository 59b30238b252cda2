"""The one rule for what is a session id, as the request fields and the store files both read it."""

from __future__ import annotations

from agent_session_ids.resolution.agents import safe_id
from agent_session_ids.resolution.ids import is_safe_id, normal_id
from agent_session_ids.resolution.jsonl_store import id_from_name

UUID = "019dbbc7-c8c5-748c-8710-3fdf6fefc083"


def test_an_id_starts_with_a_letter_or_digit_then_letters_digits_and_four_marks_up_to_128_chars():
    for good in ("a", "7", "Z_9", "feature-x", "feature_x", "v1.2:3", "a..b", "x" * 128, UUID.upper()):
        assert is_safe_id(good), good
        assert safe_id(f" {good} ") == normal_id(good)  # a request field, stripped
        assert id_from_name(f"/s/2026-05-06T12-00-00-000Z_{good}.jsonl") == normal_id(good)  # a pi file name
    # a leading '_' or '.' is refused, so '..' or '.hidden' never becomes an id; a file named so
    # gets a hash of its path instead
    for bad in ("_x", ".x", "..", ".hidden", "-x", ":x", "x" * 129, "a b", "a\nb", "a\x00", "é", "a\u202e"):
        assert not is_safe_id(bad), repr(bad)
        assert safe_id(bad) is None, repr(bad)
        assert id_from_name(f"/s/2026-05-06T12-00-00-000Z_{bad}.jsonl").startswith("file-"), repr(bad)
    for bad in ("", "a/b", "a\n", None, 42):
        assert not is_safe_id(bad), repr(bad)


def test_uuids_are_lower_cased_and_other_ids_kept_as_they_are():
    assert normal_id(UUID.upper()) == UUID
    assert normal_id("Feature-X") == "Feature-X"
    assert normal_id(UUID.upper() + "x") == UUID.upper() + "x"
