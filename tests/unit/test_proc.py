"""Issue 9, defects 7 and 9: the process lookup (resolution/proc/) after a fork, from several
threads at once, and when netlink times out or answers with an error.

Real sockets on 127.0.0.1 and real processes where the adapter must be tested for real; plain bytes
for the netlink reply parser. Every wait is on a condition (a line from a child, a process gone).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading

import pytest

from agent_session_ids.resolution import proc

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the process lookup reads Linux /proc")

processes = proc.ProcessTable()  # one table for the module, as the addon keeps one

# A client that connects to the port in argv[1], then obeys lines on stdin, answering each on stdout:
#   fork   fork a child that holds the socket and sleeps until killed; answers the child's pid
#   close  close this process's copy of the socket
#   reap   kill the child and wait for it
#   again  open a second connection and fork a child holding it at once; answers the child's pid
HOLDER = textwrap.dedent("""
    import os, signal, socket, sys
    port = int(sys.argv[1])
    socks = [socket.create_connection(("127.0.0.1", port))]
    kids = []
    def fork():
        pid = os.fork()
        if pid == 0:
            while True:
                signal.pause()
        kids.append(pid)
        return pid
    print("connected", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "fork":
            print(fork(), flush=True)
        elif cmd == "close":
            for s in socks:
                s.close()
            print("closed", flush=True)
        elif cmd == "reap":
            for pid in kids:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            kids.clear()
            print("reaped", flush=True)
        elif cmd == "again":
            socks.append(socket.create_connection(("127.0.0.1", port)))
            print(fork(), flush=True)
""")


class Holder:
    """A real client process on loopback, and the server side of its connections."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(self.server.getsockname()[1])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.kids: list[int] = []
        self.conns = []
        assert self.proc.stdout.readline().strip() == "connected"
        self.conn, self.peer = self._accept()

    def _accept(self):
        conn, peer = self.server.accept()
        self.conns.append(conn)
        return conn, peer

    def do(self, cmd: str) -> str:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def fork(self) -> int:
        kid = int(self.do("fork"))
        self.kids.append(kid)
        return kid

    def lookup(self, conn=None, peer=None):
        conn, peer = conn or self.conn, peer or self.peer
        return processes.lookup(peer, conn.getsockname())

    def close(self):
        for kid in self.kids:
            with contextlib.suppress(OSError):
                os.kill(kid, signal.SIGKILL)
        self.proc.kill()
        self.proc.wait()
        for c in self.conns:
            c.close()
        self.server.close()


@pytest.fixture
def holder():
    h = Holder()
    yield h
    h.close()


# --------------------------------------------------------------------------- defect 7: a fork after the lookup


def test_nothing_changed_gives_the_same_snapshot(holder):
    found = holder.lookup()
    assert found is not None and found.pid == holder.proc.pid and not found.shared
    assert processes.recheck(found) is found
    assert processes.recheck(found) is found


def test_a_child_forked_after_the_lookup_makes_the_socket_shared(holder):
    found = holder.lookup()
    assert found is not None and found.pid == holder.proc.pid and not found.shared
    kid = holder.fork()
    after = processes.recheck(found)
    assert after is not None, "the parent still holds the socket"
    assert after.shared, f"child {kid} shares the socket with {found.pid}, but the recheck says {after}"
    assert after.pid == found.pid and after.key == found.key
    assert processes.recheck(after) is after  # nothing changed since


def test_the_child_left_alone_with_the_socket_is_the_process_behind_it(holder):
    found = holder.lookup()
    kid = holder.fork()
    assert holder.do("close") == "closed"  # the parent goes on, without the socket
    after = processes.recheck(found)
    assert after is not None and after.pid == kid and not after.shared, after
    assert processes.recheck(after) is after


def test_the_parent_is_alone_again_once_the_child_is_gone(holder):
    found = holder.lookup()
    holder.fork()
    shared = processes.recheck(found)
    assert shared is not None and shared.shared
    assert holder.do("reap") == "reaped"
    alone = processes.recheck(shared)
    assert alone is not None and alone.pid == found.pid and not alone.shared


def test_the_child_of_a_parent_that_exited_is_found(holder):
    found = holder.lookup()
    kid = holder.fork()
    holder.proc.kill()  # the parent dies; its child, reparented, keeps the socket
    holder.proc.wait()
    after = processes.recheck(found)
    assert after is not None and after.pid == kid and not after.shared, after


def test_a_fork_right_before_the_lookup_of_a_known_owner_is_seen(holder):
    """The owner is among the recent owners, so it is found first; its child must be found too."""
    assert holder.lookup() is not None  # now a recent owner
    kid = int(holder.do("again"))  # a second connection, shared with a child before any lookup
    holder.kids.append(kid)
    conn, peer = holder._accept()
    found = holder.lookup(conn, peer)
    assert found is not None and found.shared, found


def test_a_snapshot_without_a_socket_is_rechecked_as_before(holder):
    found = holder.lookup()
    bare = dataclasses.replace(found, inode=0)
    holder.fork()
    assert processes.recheck(bare) is bare  # nothing to follow: only the program is checked


# --------------------------------------------------------------------------- defect 9: threads


class _ObservedLock:
    """A lock that tells when someone has to wait for it."""

    def __init__(self, on_wait):
        self._lock = threading.Lock()
        self._on_wait = on_wait

    def __enter__(self):
        if not self._lock.acquire(blocking=False):
            self._on_wait()
            self._lock.acquire()
        return self

    def __exit__(self, *exc):
        self._lock.release()


def pids_of_socket(table: proc.ProcessTable, inode: int, uid: int) -> list[int]:
    """The processes of user `uid` that hold socket `inode`, lowest pid first."""
    return sorted(table.holders(inode, uid))


def test_recent_owners_are_updated_safely_from_several_threads():
    """Two lookups that find the same owner at once. Each waits for the other, at the owner's test
    for membership and after its removal from the list, unless the other waits for the table's
    lock or has finished. Unsafe code then removes the owner twice (ValueError) or lists it twice."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    client = socket.create_connection(server.getsockname())
    conn, peer = server.accept()
    try:
        table = proc.ProcessTable()
        inode, uid = table.socket_owner(peer, conn.getsockname())
        cond = threading.Condition()
        arrived: dict[str, set[int]] = {}
        waited, finished = [], []

        def meet(name: str) -> None:
            with cond:
                arrived.setdefault(name, set()).add(threading.get_ident())
                cond.notify_all()
                cond.wait_for(lambda: len(arrived[name]) + len(finished) >= 2 or waited, timeout=60)

        def note(where: list) -> None:
            with cond:
                where.append(threading.get_ident())
                cond.notify_all()

        class Interleaved(list):
            def __contains__(self, item):
                found = super().__contains__(item)
                meet("contains")
                return found

            def remove(self, item):
                super().remove(item)
                meet("removed")

        recent = Interleaved([os.getpid()])
        table.recent.pids = recent
        table.recent.lock = _ObservedLock(lambda: note(waited))
        results, errors = [], []

        def work():
            try:
                results.append(pids_of_socket(table, inode, uid))
            except Exception as e:
                errors.append(e)
            finally:
                note(finished)

        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert results == [[os.getpid()], [os.getpid()]]
        assert list(recent) == [os.getpid()]
    finally:
        client.close()
        conn.close()
        server.close()


# --------------------------------------------------------------------------- defect 9: netlink


def _error_reply(err: int) -> bytes:
    request = struct.pack("=IHHII", 72, 20, 1, 1, 0)
    return struct.pack("=IHHII", 16 + 4 + 16, 2, 0, 1, 0) + struct.pack("=i", -err) + request


def _diag_reply(inode: int, uid: int) -> bytes:
    msg = struct.pack("=BBBB", socket.AF_INET, 1, 0, 0) + b"\0" * 48 + struct.pack("=IIIII", 0, 0, 0, uid, inode)
    return struct.pack("=IHHII", 16 + len(msg), 20, 0, 1, 0) + msg


def test_the_netlink_reply_is_read_for_its_error_code():
    assert proc.parse_netlink_reply(_diag_reply(4242, 1000)) == (4242, 1000)
    assert proc.parse_netlink_reply(_error_reply(errno.ENOENT)) is None  # no such socket
    for err in (errno.EPERM, errno.EACCES, errno.EOPNOTSUPP):
        with pytest.raises(proc.NetlinkUnavailable) as e:
            proc.parse_netlink_reply(_error_reply(err))
        assert e.value.unusable, errno.errorcode[err]
    with pytest.raises(proc.NetlinkUnavailable) as e:
        proc.parse_netlink_reply(_error_reply(errno.ENOBUFS))
    assert not e.value.unusable  # a passing shortage: try again next time
    for garbled in (b"", b"\0" * 15, struct.pack("=IHHII", 16, 99, 0, 1, 0)):
        with pytest.raises(proc.NetlinkUnavailable):
            proc.parse_netlink_reply(garbled)


class FakeNetlink:
    """Replaces socket.socket for AF_NETLINK only; counts the queries and answers as told."""

    def __init__(self, monkeypatch, answer):
        self.real = socket.socket
        self.queries = 0
        self.answer = answer  # bytes, or an exception to raise from recv
        fake = self

        class Sock(self.real):
            def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
                super().__init__(family, type, proto, fileno)
                self._netlink = family == socket.AF_NETLINK

            def recv(self, *a):
                if not self._netlink or fake.answer is None:
                    return super().recv(*a)
                fake.queries += 1
                if isinstance(fake.answer, BaseException):
                    raise fake.answer
                return fake.answer

        monkeypatch.setattr(socket, "socket", Sock)


@pytest.fixture
def loopback():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    client = socket.create_connection(server.getsockname())
    conn, peer = server.accept()
    want = (os.fstat(client.fileno()).st_ino, os.getuid())
    yield peer, conn.getsockname(), want
    client.close()
    conn.close()
    server.close()


@pytest.fixture
def now():
    """The clock the netlink state reads, moved by the test."""
    return [1000.0]


@pytest.fixture
def table(now):
    """A process table of its own (a fresh netlink state) on the test's clock."""
    return proc.ProcessTable(clock=lambda: now[0])


def test_one_netlink_timeout_does_not_turn_netlink_off(monkeypatch, loopback, table):
    peer, local, want = loopback
    fake = FakeNetlink(monkeypatch, TimeoutError("timed out"))
    assert table.socket_owner(peer, local) == want  # from /proc/net this time
    assert fake.queries == 1
    fake.answer = None  # netlink answers again
    assert table.socket_owner(peer, local) == want
    fake.answer = _diag_reply(*want)
    assert table.socket_owner(peer, local) == want
    assert fake.queries == 2, "netlink was not asked again after one timeout"


def test_netlink_pauses_after_timeouts_in_a_row_and_is_tried_again_later(monkeypatch, loopback, table, now):
    peer, local, want = loopback
    fake = FakeNetlink(monkeypatch, TimeoutError("timed out"))
    for _ in range(proc.NETLINK_FAILURES_BEFORE_PAUSE):
        assert table.socket_owner(peer, local) == want
    asked = fake.queries
    assert asked == proc.NETLINK_FAILURES_BEFORE_PAUSE
    assert table.socket_owner(peer, local) == want
    assert fake.queries == asked, "netlink was asked while paused"
    now[0] += proc.NETLINK_PAUSE_S + 1
    fake.answer = _diag_reply(*want)
    assert table.socket_owner(peer, local) == want
    assert fake.queries == asked + 1, "netlink was never tried again"
    # the pause is bounded, however often it fails
    fake.answer = TimeoutError("timed out")
    for _ in range(40):
        for _ in range(proc.NETLINK_FAILURES_BEFORE_PAUSE):
            table.socket_owner(peer, local)
        now[0] += proc.NETLINK_PAUSE_MAX_S + 1
    asked = fake.queries
    table.socket_owner(peer, local)
    assert fake.queries == asked + 1


@pytest.mark.parametrize("err", [errno.EPERM, errno.EOPNOTSUPP])
def test_a_netlink_error_falls_back_to_proc_net(monkeypatch, loopback, table, err):
    peer, local, want = loopback
    fake = FakeNetlink(monkeypatch, _error_reply(err))
    assert table.socket_owner(peer, local) == want, f"netlink said {errno.errorcode[err]}: read /proc/net"
    asked = fake.queries
    assert table.socket_owner(peer, local) == want
    assert fake.queries == asked, "netlink said it cannot be used here, and was asked again at once"


def test_a_netlink_no_such_socket_is_believed_once_netlink_has_found_one(monkeypatch, loopback, table):
    peer, local, want = loopback
    fake = FakeNetlink(monkeypatch, _diag_reply(*want))
    assert table.socket_owner(peer, local) == want
    fake.answer = _error_reply(errno.ENOENT)
    assert table.socket_owner(peer, local) is None  # no such socket: believed, /proc/net not read


def test_a_netlink_that_says_no_such_socket_for_a_real_one_is_not_believed(monkeypatch, loopback, table):
    """A kernel without the inet_diag module answers ENOENT to every query."""
    peer, local, want = loopback
    fake = FakeNetlink(monkeypatch, _error_reply(errno.ENOENT))
    assert table.socket_owner(peer, local) == want
    asked = fake.queries
    assert table.socket_owner(peer, local) == want
    assert fake.queries == asked
