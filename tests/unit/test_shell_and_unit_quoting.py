"""Issue 29, items 11 and 12: what `env --shell powershell` prints and what `service unit` writes are
read back here by each reader's documented rules, for hostile folder names. (bash, dash and fish are
run for real in tests/e2e/test_env_and_service.py; PowerShell and systemd are not on this machine.)
"""

from __future__ import annotations

import pytest

from agent_session_ids.cli import env, service
from agent_session_ids.cli.errors import CliError

# folder names that each try to end a quoted string early in one reader or another
HOSTILE = [
    "a'b",
    "a\\'; touch X; #",  # fish: \' inside single quotes
    "$(touch X)",
    "`touch X`",
    'a"b $HOME \\ end\\',
    "\u2019; touch X; \u2018",  # PowerShell: U+2018..U+201B are quotes too
    "\u201a\u201b''\u2019\u2019",
    "%h \\x41 ${HOME} $$ ;",  # systemd: specifiers, C escapes, variables, a lone ;
]

# ---------------------------------------------------------------------------- PowerShell

# PowerShell Language Specification 3.0, 2.3.5.2 "String literals":
#   verbatim-string-literal: single-quote-character verbatim-string-characters_opt single-quote-character
#   verbatim-string-part: any Unicode character except single-quote-character
#                         | single-quote-character single-quote-character
#   single-quote-character: ' (U+0027), U+2018, U+2019, U+201A, U+201B
PS_QUOTES = "'\u2018\u2019\u201a\u201b"


def read_powershell_verbatim(text: str) -> tuple[str, str]:
    """The value of the verbatim string at the start of `text`, and what follows it."""
    assert text[:1] in PS_QUOTES, text
    value, at = [], 1
    while at < len(text):
        ch = text[at]
        if ch in PS_QUOTES:
            if text[at + 1 : at + 2] and text[at + 1] in PS_QUOTES:  # two quote characters: one, kept
                value.append(text[at + 1])
                at += 2
                continue
            return "".join(value), text[at + 1 :]
        value.append(ch)
        at += 1
    raise AssertionError(f"unterminated string: {text!r}")


@pytest.mark.parametrize("name", HOSTILE)
def test_powershell_reads_back_each_hostile_value_and_nothing_runs_after_it(name):
    value = f"/home/u/{name}/mitmproxy-ca-cert.pem"
    (line,) = env.shell_lines({"NODE_EXTRA_CA_CERTS": value}, "powershell", unset=False)
    prefix = "$env:NODE_EXTRA_CA_CERTS = "
    assert line.startswith(prefix)
    read, rest = read_powershell_verbatim(line[len(prefix) :])
    assert (read, rest) == (value, "")


def test_powershell_unset_names_both_spellings_of_each_proxy_variable():
    lines = env.shell_lines(dict.fromkeys([*env.PROXY_NAMES, *env.SHELL_TRUST], ""), "powershell", unset=True)
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        assert f"Remove-Item Env:{name} -ErrorAction SilentlyContinue" in lines


# ---------------------------------------------------------------------------- systemd

# systemd.syntax(7) "Quoting" and systemd.service(5) "Command lines": words split at whitespace, a word
# in quotes may hold whitespace, C escapes are decoded (in quotes too); "%%" is a % and any other %
# a specifier; "$$" is a $ and $NAME / ${NAME} are substituted, in every word but the executable's
# path; "@path argv0 ..." runs path with argv0 as argv[0]; a lone unquoted ";" separates commands.


def read_systemd_exec(value: str) -> tuple[str, list[str]]:
    """(the executable's path, argv) as systemd takes them from an ExecStart= value; raises
    AssertionError where systemd would change a word (a specifier, a C escape, a variable)."""
    assert "\n" not in value
    words, at = [], 0
    while True:
        while at < len(value) and value[at] in " \t":
            at += 1
        if at == len(value):
            break
        assert not (value[at] == ";" and value[at + 1 : at + 2] in ("", " ")), "a lone ; ends the command"
        word, quote = [], None
        while at < len(value) and (quote or value[at] not in " \t"):
            ch = value[at]
            if ch in "\"'" and quote in (None, ch):
                quote = None if quote else ch
            elif ch == "\\":
                escaped = value[at + 1]
                assert escaped in "\\\"'", f"systemd decodes the C escape \\{escaped} in {value!r}"
                word.append(escaped)
                at += 1
            elif ch == "%":
                assert value[at + 1] == "%", f"systemd expands the specifier %{value[at + 1]} in {value!r}"
                word.append("%")
                at += 1
            else:
                word.append(ch)
            at += 1
        assert quote is None, f"unterminated quote in {value!r}"
        words.append("".join(word))
    path, argv = (words[0][1:], words[1:]) if words[0].startswith("@") else (words[0], words)
    return path, [_substituted(word) for word in argv]


def _substituted(word: str) -> str:
    out, at = [], 0
    while at < len(word):
        if word[at] == "$":
            assert word[at + 1 : at + 2] == "$", f"systemd substitutes the variable in {word!r}"
            at += 1
        out.append(word[at])
        at += 1
    return "".join(out)


@pytest.mark.parametrize("name", HOSTILE)
def test_the_systemd_command_is_read_back_word_for_word(name):
    argv = ["/usr/bin/python3", "-c", "import sys; sys.exit(0)", "--set", f"confdir=/home/u/{name}/conf"]
    path, read = read_systemd_exec(service.systemd_command(argv))
    assert (path, read) == (argv[0], argv)


def test_an_executable_path_with_a_dollar_is_run_literally_and_its_argv0_kept():
    argv = ["/opt/$HOME/py%h/python3", "-V"]
    command = service.systemd_command(argv)
    assert command.startswith('@"/opt/$HOME/py%%h/python3" "/opt/$$HOME/py%%h/python3" ')
    assert read_systemd_exec(command) == (argv[0], argv)


@pytest.mark.parametrize("word", ["/home/u/a\nb", "/home/u/a\rb", "/home/u/\x1b[2J", "/home/u/\x85", "/home/u/\udcff"])
def test_a_control_character_in_a_unit_path_is_refused_in_one_line(word):
    with pytest.raises(CliError) as refused:
        service.systemd_command(["/usr/bin/python3", "--set", f"confdir={word}"])
    message = str(refused.value)
    assert "\n" not in message and "\x1b" not in message and "confdir=/home/u/" in message


@pytest.mark.parametrize("path", ['/opt/a"b/python3', "/opt/a'b/python3", "/opt/a\\b/python3"])
def test_an_executable_systemd_cannot_run_is_said_so(path):
    with pytest.raises(CliError, match="systemd cannot run"):
        service.systemd_command([path, "-V"])
