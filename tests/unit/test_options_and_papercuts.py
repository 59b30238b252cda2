"""Issue 31, items 2 and 5: the config file's errors, --version, one prefix per error line and
"did you mean" for every choice. The real command table (cli.run.main) with real files."""

from __future__ import annotations

import importlib.metadata
import sys

import pytest

from agent_session_ids import __version__
from agent_session_ids.cli import config
from agent_session_ids.cli.run import main


def said(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_version_names_this_program_mitmproxy_and_python(capsys):
    for flag in ("--version", "-V"):
        code, out, _ = said(capsys, flag)
        python = sys.version.split()[0]
        mitmproxy = importlib.metadata.version("mitmproxy")
        assert (code, out) == (0, f"agent-session-ids {__version__} (mitmproxy {mitmproxy}, Python {python})\n")


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["proxy", "strat"],
            "agent-session-ids proxy: argument action: invalid choice: 'strat'; did you mean start? "
            "(choose from start, stop, status, restart) (see agent-session-ids proxy --help)\n",
        ),
        (
            ["service", "instal"],
            "agent-session-ids service: argument action: invalid choice: 'instal'; did you mean install? "
            "(choose from install, uninstall, status, unit) (see agent-session-ids service --help)\n",
        ),
        (
            ["service", "unit", "--platform", "macs"],
            "agent-session-ids service: argument --platform: invalid choice: 'macs'; did you mean macos? "
            "(choose from linux, macos) (see agent-session-ids service --help)\n",
        ),
        (
            ["doctor", "--jsn"],
            "agent-session-ids doctor: unrecognized arguments: --jsn (see agent-session-ids doctor --help)\n",
        ),
    ],
)
def test_a_usage_error_is_one_line_with_one_prefix_and_a_close_choice_named(capsys, argv, line):
    code, out, err = said(capsys, *argv)
    assert (code, out, err) == (1, "", line)


def test_the_reports_choices_get_a_did_you_mean_too(capsys):
    with pytest.raises(SystemExit):
        main(["report", "--by", "mnth"])
    err = capsys.readouterr().err
    assert err.startswith("agent-session-ids report: argument --by: invalid choice: 'mnth'; did you mean month?")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("text", "said_"),
    [
        ("listen_port: [8080\n", "config.yaml line 2: "),  # not YAML: PyYAML's own line
        ("- listen_port\n", "config.yaml: holds a list, not options"),
        ("'just words'\n", "config.yaml: holds a str, not options"),
        (
            "session_privacy: true\nlisten_port: 70000\n",
            "config.yaml line 2: listen_port 70000 is not a port; give 1 to 65535",
        ),
        ("listen_port: '8080'\n", "config.yaml line 1: listen_port '8080' is not a port"),
        ("listen_port: yes\n", "config.yaml line 1: listen_port True is not a port"),
        ("listen_host: [1]\n", "config.yaml line 1: listen_host [1] is not an address"),
        ("listen_host: proxy.example\n", "listen_host 'proxy.example' ("),
    ],
)
def test_a_bad_config_file_is_one_line_with_the_file_and_line(capsys, tmp_path, text, said_):
    (tmp_path / "config.yaml").write_text(text)
    code, out, err = said(capsys, "proxy", "status", "--confdir", str(tmp_path))
    assert code == 1 and out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"agent-session-ids: {tmp_path}/config.yaml" if "(" not in said_ else "agent-session-ids: ")
    assert said_ in err


def test_config_yml_wins_over_config_yaml_and_a_flag_over_both(tmp_path):
    (tmp_path / "config.yaml").write_text("listen_port: 9001\nsession_privacy: true\n")
    (tmp_path / "config.yml").write_text("listen_port: 9002\n")
    read = config.read(tmp_path)
    assert (read.listen_port, read.options["session_privacy"], read.where) == (9002, True, tmp_path / "config.yml")
    from argparse import Namespace

    from agent_session_ids.cli.run import _place

    assert _place(Namespace(port=None, listen_host=None, confdir=str(tmp_path))).port == 9002
    assert _place(Namespace(port=9003, listen_host=None, confdir=str(tmp_path))).port == 9003


def test_the_commands_reach_a_proxy_on_every_interface_at_loopback_and_another_address_there(tmp_path):
    from argparse import Namespace

    from agent_session_ids.cli.run import _place

    for host, url in (
        ("0.0.0.0", "127.0.0.1"),
        ("", "127.0.0.1"),
        ("::", "127.0.0.1"),
        ("::1", "[::1]"),
        ("10.1.2.3", "10.1.2.3"),
    ):
        (tmp_path / "config.yaml").write_text(f"listen_port: 9005\nlisten_host: '{host}'\n")
        place = _place(Namespace(port=None, listen_host=None, confdir=str(tmp_path)))
        assert (place.listen_host, place.url) == (host, f"http://{url}:9005")


def test_doctor_names_the_config_file_or_where_it_would_go(tmp_path):
    assert config.doctor_line(config.read(tmp_path)) == (
        "ok",
        f"none; options such as listen_port and session_privacy go in {tmp_path}/config.yaml",
    )
    (tmp_path / "config.yaml").write_text("listen_port: 9004\nsession_privacy: true\n")
    assert config.doctor_line(config.read(tmp_path)) == (
        "ok",
        f"{tmp_path}/config.yaml sets listen_port: 9004, session_privacy: True",
    )


def test_no_config_file_costs_no_yaml_import(tmp_path):
    import subprocess

    probe = (
        "import sys; from pathlib import Path; from agent_session_ids.cli import config; "
        f"config.read(Path({str(tmp_path)!r})); print('yaml' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_a_set_option_the_config_file_would_override_is_refused_before_anything_starts(capsys, tmp_path):
    (tmp_path / "config.yaml").write_text("session_privacy: true\n")
    code, out, err = said(capsys, "proxy", "start", "--confdir", str(tmp_path), "--", "--set", "session_privacy=false")
    assert (code, out) == (1, "") and err == (
        f"agent-session-ids: --set session_privacy would not take effect: {tmp_path}/config.yaml sets it, "
        "and mitmproxy reads that file after --set; change it there\n"
    )
    assert not (tmp_path / "agent-session-ids").exists()  # nothing started


def test_the_service_unit_runs_the_proxy_on_the_config_files_port_and_address(capsys, tmp_path):
    (tmp_path / "config.yaml").write_text("listen_port: 9011\nlisten_host: 0.0.0.0\n")
    code, unit, _ = said(capsys, "service", "unit", "--platform", "linux", "--confdir", str(tmp_path))
    assert code == 0 and '"--listen-host" "0.0.0.0" "-p" "9011"' in unit, unit
    code, unit, _ = said(capsys, "service", "unit", "--platform", "linux", "--confdir", str(tmp_path), "--port", "9012")
    assert code == 0 and '"-p" "9012"' in unit  # a flag wins over the file
