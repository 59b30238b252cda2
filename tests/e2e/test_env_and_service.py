"""Issue 29, items 4, 8, 11 and 12, with real programs: the `agent-session-ids` console script, a real
proxy, real curl and Python clients, the real bash, dash and fish, and systemd-analyze.

fish is not installed here: the `fish` fixture takes Debian's package (and the libraries it needs
that are missing) with `apt-get download` into the test cache and runs it from there, no root needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import harness

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux shells")]

CLI = str(Path(sys.executable).with_name("agent-session-ids"))
PROXY_NAMES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy")
TRUST_NAMES = ("NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
# the caller's own proxy variables, each of which once won over what run and launch set
CALLERS_PROXY = {
    "https_proxy": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "no_proxy": "openrouter.ai",
    "ALL_PROXY": "http://127.0.0.1:9",
}
# folder names that each try to end a quoted string early in one shell or another (the last one a
# newline, which bash, dash and fish keep inside single quotes)
HOSTILE = [
    "a'b",
    "a\\'; touch X; #",
    "$(touch X)",
    "`touch X`",
    'a"b $HOME \\ end\\',
    "\u2019; touch X; \u2018",
    "%h \\x41 ${HOME} $$ ;",
    "two\nlines",
]
SHOW_ENV = f"import json, os; print(json.dumps({{k: os.environ.get(k) for k in {list(PROXY_NAMES + TRUST_NAMES)!r}}}))"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY") and k not in TRUST_NAMES}
    return {**env, **extra}


def cli(*words: str, port: int, confdir: Path, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    command, rest = words[0], list(words[1:])
    place = ["--port", str(port), "--confdir", str(confdir)]
    argv = (
        [CLI, command, rest.pop(0), *place, *rest] if command in ("proxy", "service") else [CLI, command, *place, *rest]
    )
    return subprocess.run(
        argv, env=env or clean_env(), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, **kw
    )


def fake_ca(confdir: Path) -> Path:
    """A CA file where the proxy keeps it: `env` only needs one to exist (nothing here verifies TLS)."""
    confdir.mkdir(parents=True, exist_ok=True)
    ca = confdir / "mitmproxy-ca-cert.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    return ca


# ---------------------------------------------------------------------------- item 4: both spellings


@pytest.fixture
def proxy(tmp_path):
    """A real proxy (the gateway stand-in after the addon) on a free port, stopped afterwards."""
    port, confdir = free_port(), tmp_path / "confdir"
    log = tmp_path / "standin.jsonl"
    env = clean_env(STANDIN_LOG=str(log))
    started = cli("proxy", "start", "--", "-s", str(harness.STANDIN_SCRIPT), port=port, confdir=confdir, env=env)
    assert started.returncode == 0, started.stderr
    yield port, confdir, env, log
    cli("proxy", "stop", port=port, confdir=confdir, env=env)


CLIENT = r"""
import json, sys, urllib.request
print(json.dumps(urllib.request.getproxies()))
body = json.dumps({"model": "m", "messages": [{"role": "user", "content": sys.argv[1]}]}).encode()
request = urllib.request.Request("https://openrouter.ai/api/v1/chat/completions", body,
                                 {"content-type": "application/json"})
print(urllib.request.urlopen(request, timeout=60).status)
"""


def test_run_gives_the_program_the_proxy_in_both_spellings_over_the_callers_lower_case_ones(proxy, tmp_path):
    port, confdir, env, log = proxy
    caller = {**env, **CALLERS_PROXY}
    client = tmp_path / "client.py"
    client.write_text(CLIENT)
    run = cli("run", "--", sys.executable, str(client), "python through run", port=port, confdir=confdir, env=caller)
    assert run.returncode == 0, (run.stdout, run.stderr)
    seen, status = run.stdout.splitlines()
    url = f"http://127.0.0.1:{port}"
    assert json.loads(seen) == {
        "https": url,
        "http": url,
        "no": "localhost,127.0.0.1,::1",
        "all": "http://127.0.0.1:9",
    }  # ALL_PROXY is left alone: https wins over it
    assert status == "200"
    shown = cli("run", "--", sys.executable, "-c", SHOW_ENV, port=port, confdir=confdir, env=caller)
    values = json.loads(shown.stdout)
    assert {values[name] for name in PROXY_NAMES[:4]} == {url}
    assert values["NO_PROXY"] == values["no_proxy"] == "localhost,127.0.0.1,::1"
    curl = shutil.which("curl")
    if curl:  # curl too reads https_proxy and no_proxy before the upper-case ones (and no SSL_CERT_FILE)
        request = (
            f'"{curl}" -sS --max-time 60 -o /dev/null -w "%{{http_code}}" --cacert "$SSL_CERT_FILE" '
            """-H 'content-type: application/json' """
            """--data '{"model": "m", "messages": [{"role": "user", "content": "curl through run"}]}' """
            "https://openrouter.ai/api/v1/chat/completions"
        )
        through = cli("run", "--", "sh", "-c", request, port=port, confdir=confdir, env=caller)
        assert through.returncode == 0 and through.stdout == "200", (through.stdout, through.stderr)
    bodies = [r["body"] for r in harness.read_standin_log(log) if r.get("kind", "request") == "request"]
    assert any("python through run" in b for b in bodies), bodies
    assert not curl or any("curl through run" in b for b in bodies), bodies


def test_doctor_checks_each_spelling_of_the_proxy_variables(tmp_path):
    port, confdir = free_port(), tmp_path / "confdir"
    url = f"http://127.0.0.1:{port}"
    well = clean_env(HTTPS_PROXY=url, https_proxy=url, NO_PROXY="localhost", no_proxy="localhost")

    def line(name: str, env: dict) -> str:
        out = cli("doctor", port=port, confdir=confdir, env=env).stdout
        return next((x for x in out.splitlines() if x[5:].startswith(name + ":")), "")

    assert line("HTTPS_PROXY", well).startswith("OK")
    assert line("NO_PROXY", well).startswith("OK")
    wrong = line("HTTPS_PROXY", {**well, "https_proxy": "http://127.0.0.1:9"})
    assert wrong.startswith("FAIL") and "https_proxy points at http://127.0.0.1:9" in wrong
    only_lower = line("HTTPS_PROXY", {**clean_env(https_proxy=url)})
    assert only_lower.startswith("OK")
    bypass = line("NO_PROXY", {**well, "no_proxy": "localhost,openrouter.ai"})
    assert bypass.startswith("FAIL") and "openrouter.ai bypass the proxy (in no_proxy)" in bypass
    assert line("ALL_PROXY", well) == ""
    assert line("ALL_PROXY", {**well, "ALL_PROXY": "socks5://127.0.0.1:9"}).startswith("WARN")
    assert line("all_proxy", {**well, "all_proxy": url}) == ""  # the proxy itself is fine


# ---------------------------------------------------------------------------- item 8: a fresh confdir


def test_env_on_a_fresh_confdir_makes_the_private_folder_and_prints_the_lines(tmp_path):
    confdir = tmp_path / "confdir"
    fake_ca(confdir)
    out = cli("env", "--no-start", port=free_port(), confdir=confdir)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    folder = confdir / "agent-session-ids"
    bundle = folder / "ca-bundle.pem"
    assert f"export SSL_CERT_FILE='{bundle}'" in out.stdout.splitlines()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE(bundle.stat().st_mode) == 0o600
    assert bundle.read_text().endswith((confdir / "mitmproxy-ca-cert.pem").read_text())


# ---------------------------------------------------------------------------- item 11: real shells


class Fish:
    def __init__(self, binary: str, env: dict[str, str]) -> None:
        self.binary, self.env = binary, env


def _deb_fish() -> Fish:
    """Debian's fish, unpacked into the test cache with the libraries it needs that are missing."""
    folder = harness.cache_dir() / "debian-fish"
    binary = folder / "usr" / "bin" / "fish"
    if not binary.exists():
        if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
            pytest.skip("fish is not installed and there is no apt-get/dpkg-deb to fetch Debian's package")
        with tempfile.TemporaryDirectory(dir=harness.cache_dir()) as work:

            def download(*packages: str) -> None:
                got = subprocess.run(
                    ["apt-get", "download", *packages], cwd=work, capture_output=True, text=True, timeout=300
                )
                if got.returncode != 0:
                    pytest.skip(f"apt-get download {' '.join(packages)} failed: {got.stderr.strip()[-300:]}")

            download("fish")
            (deb,) = Path(work).glob("fish_*.deb")
            depends = subprocess.run(
                ["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True, text=True, check=True
            ).stdout
            libraries = [d.strip().split()[0] for d in depends.split(",") if d.strip().startswith("lib")]
            missing = [
                lib
                for lib in libraries
                if "install ok installed"
                not in subprocess.run(["dpkg-query", "-W", "-f=${Status}", lib], capture_output=True, text=True).stdout
            ]
            if missing:
                download(*missing)
            unpacked = Path(work) / "root"
            for package in Path(work).glob("*.deb"):
                subprocess.run(["dpkg-deb", "-x", str(package), str(unpacked)], check=True, timeout=120)
            with contextlib.suppress(OSError):  # another session may have won
                os.replace(unpacked, folder)  # whole, or not at all
    libs = os.pathsep.join(str(p) for p in folder.glob("usr/lib/*-linux-gnu"))
    return Fish(str(binary), {"LD_LIBRARY_PATH": libs} if libs else {})


@pytest.fixture(scope="session")
def fish() -> Fish:
    found = shutil.which("fish")
    shell = Fish(found, {}) if found else _deb_fish()
    version = subprocess.run(
        [shell.binary, "--no-config", "--version"],
        env={**os.environ, **shell.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if version.returncode != 0:
        pytest.skip(f"fish does not run here: {version.stderr.strip()[-300:]}")
    return shell


def sourced(shell: str, confdir: Path, work: Path, fish: Fish | None = None, unset: bool = False) -> dict:
    """The variables a shell has after sourcing `env` (then `env --unset` when asked), as a child sees them."""
    env = clean_env(CLI=CLI, CONFDIR=str(confdir), PY=sys.executable, SHOW=SHOW_ENV)
    if shell == "fish":
        assert fish is not None
        script = "$CLI env --no-start --confdir $CONFDIR --shell fish | source; or exit 3\n"
        if unset:
            script += "$CLI env --confdir $CONFDIR --shell fish --unset | source; or exit 3\n"
        argv = [fish.binary, "--no-config", "-c", script + "$PY -c $SHOW"]
        env.update(fish.env)
    else:
        script = 'eval "$("$CLI" env --no-start --confdir "$CONFDIR")" || exit 3\n'
        if unset:
            script += 'eval "$("$CLI" env --confdir "$CONFDIR" --unset)" || exit 3\n'
        argv = [shell, "-c", script + '"$PY" -c "$SHOW"']
    done = subprocess.run(argv, env=env, cwd=work, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (shell, done.stdout, done.stderr)
    return json.loads(done.stdout)


@pytest.mark.parametrize("shell", ["bash", "dash", "fish"])
def test_sourcing_env_sets_each_variable_exactly_for_hostile_folder_names_and_runs_nothing(shell, tmp_path, request):
    if not shutil.which(shell) and shell != "fish":
        pytest.skip(f"{shell} is not installed")
    shell_fish = request.getfixturevalue("fish") if shell == "fish" else None
    for number, name in enumerate(HOSTILE):
        confdir = tmp_path / str(number) / name / "confdir"
        ca = fake_ca(confdir)
        work = tmp_path / str(number) / "work"
        work.mkdir()
        values = sourced(shell, confdir, work, shell_fish)
        assert values["NODE_EXTRA_CA_CERTS"] == str(ca), (shell, name)
        assert (
            values["SSL_CERT_FILE"]
            == values["REQUESTS_CA_BUNDLE"]
            == str(confdir / "agent-session-ids" / "ca-bundle.pem")
        ), (shell, name)
        assert {values[n] for n in PROXY_NAMES[:4]} == {"http://127.0.0.1:8080"}
        assert values["NO_PROXY"] == values["no_proxy"] == "localhost,127.0.0.1,::1"
        assert list(work.iterdir()) == [], (shell, name, "a command in the folder name ran")
    unset = sourced(shell, confdir, work, shell_fish, unset=True)
    assert unset == dict.fromkeys(PROXY_NAMES + TRUST_NAMES), (shell, unset)


# ---------------------------------------------------------------------------- item 12: the systemd unit


def test_the_unit_for_a_hostile_confdir_verifies_and_a_newline_is_refused_in_one_line(tmp_path):
    import plistlib

    confdir = tmp_path / "%h \\x41 ${HOME} $$ ; \"q\" 's'"
    port = free_port()
    unit = cli("service", "unit", "--platform", "linux", port=port, confdir=confdir)
    assert unit.returncode == 0, unit.stderr
    (exec_start,) = [x for x in unit.stdout.splitlines() if x.startswith("ExecStart=")]
    from test_shell_and_unit_quoting import read_systemd_exec

    path, argv = read_systemd_exec(exec_start[len("ExecStart=") :])
    assert f"confdir={confdir}" in argv and os.path.samefile(path, sys.executable)
    analyze = shutil.which("systemd-analyze")
    if analyze:
        written = tmp_path / "agent-session-ids.service"
        written.write_text(unit.stdout)
        verify = subprocess.run([analyze, "verify", str(written)], capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0, verify.stderr
    plist = plistlib.loads(cli("service", "unit", "--platform", "macos", port=port, confdir=confdir).stdout.encode())
    assert f"confdir={confdir}" in plist["ProgramArguments"]
    # a newline would end systemd's line; XML keeps it, but has no place for ESC
    for platform, name, named in (("linux", "two\nlines", "two\\nlines"), ("macos", "esc\x1b[2J", "esc\\x1b[2J")):
        refused = cli("service", "unit", "--platform", platform, port=port, confdir=tmp_path / name)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        assert named in refused.stderr and "Traceback" not in refused.stderr
    lines = cli("service", "unit", "--platform", "macos", port=port, confdir=tmp_path / "two\nlines").stdout
    assert f"confdir={tmp_path}/two\nlines" in plistlib.loads(lines.encode())["ProgramArguments"]


def test_an_executable_in_a_folder_with_a_dollar_is_the_one_systemd_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package)")
    from agent_session_ids.cli.service import systemd_command

    folder = tmp_path / "$HOME %h ${X}"
    folder.mkdir()
    program = folder / "prog"
    shutil.copy("/bin/true", program)
    unit = tmp_path / "t.service"
    unit.write_text(f"[Service]\nExecStart={systemd_command([str(program), 'x'])}\n")
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stderr
