"""STOMP interoperability tests driven by the third-party `stomp.py` client.

These tests describe the behaviour of Apache ActiveMQ 5.17 as seen through
stomp.py; ferromq has to behave the same way. They were validated against a
real ActiveMQ 5.17.2 broker (see scripts/activemq-local.sh).

Broker address: env STOMP_HOST (default 127.0.0.1) and STOMP_PORT (default 61613).

    pip install -r tests/interop/python/requirements.txt
    STOMP_PORT=62613 python3 -m pytest -v tests/interop/python

Rules every test follows:
  * destinations carry a fresh uuid, so tests never see each other's messages
    (the shared queue ActiveMQ.DLQ is read with client-individual acks and only
    the message whose unique body matches is acked);
  * every wait is bounded (single waits <= 10 s, plus a 30 s per-test alarm as
    a safety net);
  * every connection opened by a test is closed by the `client` fixture.
"""

import os
import queue
import signal
import threading
import time
import uuid

import pytest
import stomp

HOST = os.environ.get("STOMP_HOST", "127.0.0.1")
PORT = int(os.environ.get("STOMP_PORT", "61613"))
# The broker's STOMP-over-WebSocket listener (ActiveMQ's ws://, 61614).
WS_PORT = int(os.environ.get("WS_PORT", "61614"))

WAIT = 5.0  # default bound for "this frame must arrive"
QUIET = 1.0  # how long we listen to conclude "nothing (more) arrives"
TEST_DEADLINE = 30  # hard safety net per test, seconds

DLQ = "/queue/ActiveMQ.DLQ"


def uid():
    return uuid.uuid4().hex


def queue_name(tag="q"):
    return "/queue/interop-py-%s-%s" % (tag, uid())


def topic_name(tag="t"):
    return "/topic/interop-py-%s-%s" % (tag, uid())


class Recorder(stomp.ConnectionListener):
    """Collects everything a stomp.py connection receives."""

    def __init__(self):
        self.messages = queue.Queue()
        self.errors = []
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connected_frame = None
        self.heartbeats = 0
        self.heartbeat_timeouts = 0
        self._receipts = set()
        self._cond = threading.Condition()

    # -- stomp.py callbacks (run on the receiver thread) --
    def on_connected(self, frame):
        self.connected_frame = frame
        self.connected.set()

    def on_message(self, frame):
        self.messages.put(frame)

    def on_receipt(self, frame):
        with self._cond:
            self._receipts.add(frame.headers.get("receipt-id"))
            self._cond.notify_all()

    def on_error(self, frame):
        with self._cond:
            self.errors.append(frame)
            self._cond.notify_all()
        self.connected.set()  # unblock a pending connect wait

    def on_disconnected(self):
        self.disconnected.set()
        with self._cond:
            self._cond.notify_all()

    def on_heartbeat(self):
        self.heartbeats += 1

    def on_heartbeat_timeout(self):
        self.heartbeat_timeouts += 1

    # -- helpers used by the tests (main thread) --
    def get(self, timeout=WAIT):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                "no MESSAGE within %.1fs (errors: %s)" % (timeout, self.error_text())
            ) from None

    def get_n(self, n, timeout=WAIT):
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    "got %d of %d messages within %.1fs: %r (errors: %s)"
                    % (len(out), n, timeout, [f.body for f in out], self.error_text())
                )
            try:
                out.append(self.messages.get(timeout=left))
            except queue.Empty:
                pass
        return out

    def quiet(self, seconds=QUIET):
        """Return every MESSAGE that arrives in the next `seconds`."""
        deadline = time.monotonic() + seconds
        out = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            try:
                out.append(self.messages.get(timeout=left))
            except queue.Empty:
                return out

    def wait_receipt(self, receipt_id, timeout=WAIT):
        deadline = time.monotonic() + timeout
        with self._cond:
            while receipt_id not in self._receipts:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        "no RECEIPT %r within %.1fs (errors: %s)"
                        % (receipt_id, timeout, self.error_text())
                    )
                self._cond.wait(left)

    def has_receipt(self, receipt_id):
        with self._cond:
            return receipt_id in self._receipts

    def error_text(self):
        return [
            (f.headers.get("message"), (f.body or "")[:200] if isinstance(f.body, str) else f.body[:200])
            for f in self.errors
        ]


class Client:
    """One stomp.py connection plus its Recorder."""

    def __init__(self, version="1.2", heartbeats=(0, 0), headers=None, auto_decode=True, port=None, ws=False):
        self.version = version
        self.rec = Recorder()
        port = port or (WS_PORT if ws else PORT)
        common = dict(
            host_and_ports=[(HOST, port)],
            timeout=WAIT,
            reconnect_attempts_max=1,
            auto_decode=auto_decode,
        )
        if ws:
            # stomp.py's WebSocket transport (websocket-client underneath).
            self.conn = stomp.WSStompConnection(heartbeats=heartbeats, ws_path="/", **common)
        elif version == "1.0":
            self.conn = stomp.Connection10(**common)
        elif version == "1.1":
            self.conn = stomp.Connection11(heartbeats=heartbeats, **common)
        elif version == "1.2":
            self.conn = stomp.Connection12(heartbeats=heartbeats, **common)
        else:
            raise ValueError(version)
        self.conn.set_listener("recorder", self.rec)
        self.conn.connect(wait=False, headers=dict(headers or {}))
        if not self.rec.connected.wait(10):
            self.close()
            raise AssertionError("no CONNECTED frame within 10s from %s:%s" % (HOST, port))
        if self.rec.connected_frame is None:
            errs = self.rec.error_text()
            self.close()
            raise AssertionError("connect failed: %s" % (errs,))

    @property
    def connected_headers(self):
        return self.rec.connected_frame.headers

    def subscribe(self, destination, sub_id=None, ack="auto", headers=None, receipt=True):
        """SUBSCRIBE and (by default) wait for its RECEIPT, so the subscription
        is known to be active before anything is sent."""
        h = dict(headers or {})
        rid = None
        if receipt:
            rid = "sub-" + uid()
            h["receipt"] = rid
        self.conn.subscribe(destination, id=sub_id, ack=ack, headers=h)
        if rid:
            self.rec.wait_receipt(rid)
        return sub_id

    def send(self, destination, body, headers=None, receipt=True, **kw):
        h = dict(headers or {})
        rid = None
        if receipt:
            rid = "send-" + uid()
            h["receipt"] = rid
        self.conn.send(destination, body, headers=h, **kw)
        if rid:
            self.rec.wait_receipt(rid)

    def sync(self):
        """Barrier: a receipted SUBSCRIBE/UNSUBSCRIBE pair on a private queue.
        Frames are processed in order, so once this returns the broker has
        handled everything sent on this connection before it."""
        q = queue_name("sync")
        sid = "sync-" + uid()
        self.subscribe(q, sid)
        rid = "unsub-" + uid()
        self.conn.unsubscribe(id=sid, headers={"receipt": rid})
        self.rec.wait_receipt(rid)

    def disconnect(self, timeout=WAIT):
        """Graceful DISCONNECT (stomp.py adds a receipt); waits until the
        socket is gone."""
        try:
            if self.conn.is_connected():
                self.conn.disconnect()  # non-blocking: receipt handled by the io thread
                self.rec.disconnected.wait(timeout)
        finally:
            self.kill()

    def kill(self):
        """Drop the TCP connection without a DISCONNECT frame."""
        try:
            self.conn.transport.disconnect_socket()
        except Exception:
            pass
        self.rec.disconnected.wait(2)

    def close(self):
        try:
            self.disconnect()
        except Exception:
            self.kill()


@pytest.fixture(autouse=True)
def _deadline():
    """Safety net: no test may run longer than TEST_DEADLINE seconds."""

    def boom(signum, frame):
        raise TimeoutError("test exceeded %ss" % TEST_DEADLINE)

    old = signal.signal(signal.SIGALRM, boom)
    signal.setitimer(signal.ITIMER_REAL, TEST_DEADLINE)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def client():
    """Factory: client(version=..., heartbeats=..., headers=..., auto_decode=...).
    Every connection it creates is closed at teardown."""
    made = []

    def make(**kw):
        c = Client(**kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def assert_nothing(client_, what, seconds=QUIET):
    extra = client_.rec.quiet(seconds)
    assert extra == [], "%s: unexpected MESSAGE(s) %r" % (what, [(f.headers, f.body) for f in extra])


def is_true(v):
    return v is not None and v.lower() == "true"


# ---------------------------------------------------------------------------
# basic send / receive per protocol version
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_queue_send_receive_per_version(client, version):
    q = queue_name("ver" + version.replace(".", ""))
    c = client(version=version)
    # the broker answers with the version that was negotiated
    assert c.connected_headers.get("version", "1.0") == version
    assert "session" in c.connected_headers

    body = "hello %s %s" % (version, uid())
    c.send(q, body, headers={"x-proto": version})

    # 1.0 allows a subscription without id; 1.1/1.2 require one
    sub_id = None if version == "1.0" else "s-" + uid()
    c.subscribe(q, sub_id, ack="client")
    m = c.rec.get()
    assert m.cmd == "MESSAGE"
    assert m.body == body
    assert m.headers["destination"] == q
    assert m.headers.get("x-proto") == version
    assert m.headers.get("message-id")
    if sub_id is not None:
        assert m.headers["subscription"] == sub_id

    # ACK using each version's own syntax
    if version == "1.0":
        c.conn.ack(m.headers["message-id"], receipt="ack1")
    elif version == "1.1":
        c.conn.ack(m.headers["message-id"], sub_id, receipt="ack1")
    else:
        assert m.headers.get("ack"), "1.2 client-ack MESSAGE must carry an ack header"
        c.conn.ack(m.headers["ack"], receipt="ack1")
    c.rec.wait_receipt("ack1")
    c.disconnect()

    # the acked message is gone
    c2 = client(version=version)
    c2.subscribe(q, None if version == "1.0" else "s2", ack="auto")
    assert_nothing(c2, "queue after ACK")


# ---------------------------------------------------------------------------
# topics
# ---------------------------------------------------------------------------


def test_topic_broadcast_two_subscribers(client):
    t = topic_name()
    a = client()
    b = client()
    a.subscribe(t, "sa")
    b.subscribe(t, "sb")
    p = client()
    bodies = ["bcast-%d-%s" % (i, uid()) for i in range(3)]
    for body in bodies:
        p.send(t, body)
    for sub, c in (("sa", a), ("sb", b)):
        got = c.rec.get_n(3)
        assert [m.body for m in got] == bodies
        assert all(m.headers["destination"] == t for m in got)
        assert all(m.headers["subscription"] == sub for m in got)
    assert_nothing(a, "topic subscriber a", 0.5)
    assert_nothing(b, "topic subscriber b", 0.5)


# ---------------------------------------------------------------------------
# ack modes
# ---------------------------------------------------------------------------


def test_ack_auto_consumes(client):
    q = queue_name("auto")
    c = client()
    bodies = ["auto-%d-%s" % (i, uid()) for i in range(2)]
    for body in bodies:
        c.send(q, body)
    c.subscribe(q, "s1", ack="auto")
    assert [m.body for m in c.rec.get_n(2)] == bodies
    c.disconnect()

    c2 = client()
    c2.subscribe(q, "s1", ack="auto")
    assert_nothing(c2, "auto-acked messages must not be redelivered")


def test_ack_client_is_cumulative(client):
    q = queue_name("client")
    c = client()
    bodies = ["cum-%d-%s" % (i, uid()) for i in range(5)]
    for body in bodies:
        c.send(q, body, headers={"persistent": "true"})
    c.subscribe(q, "s1", ack="client")
    got = c.rec.get_n(5)
    assert [m.body for m in got] == bodies
    assert all(not is_true(m.headers.get("redelivered")) for m in got)

    # ACK of the 3rd message acknowledges messages 1..3
    c.conn.ack(got[2].headers["ack"], receipt="ack3")
    c.rec.wait_receipt("ack3")
    c.disconnect()

    c2 = client()
    c2.subscribe(q, "s2", ack="client")
    again = c2.rec.get_n(2)
    assert [m.body for m in again] == bodies[3:]
    for m in again:
        # ActiveMQ marks them: header `redelivered` with value `true`
        assert m.headers.get("redelivered") == "true", m.headers
        # same message ids as the first delivery
    assert [m.headers["message-id"] for m in again] == [m.headers["message-id"] for m in got[3:]]
    assert_nothing(c2, "only the 2 unacked messages come back")
    c2.conn.ack(again[-1].headers["ack"], receipt="ack-rest")
    c2.rec.wait_receipt("ack-rest")


def _take_from_dlq(client, body, forbidden=(), timeout=8.0):
    """Read ActiveMQ.DLQ with client-individual acks; ack and return only the
    frame whose body is `body` (other tests' dead letters are left alone).
    With `forbidden`, keeps listening a little longer and fails if any of
    those bodies is on the DLQ too."""
    d = client()
    d.subscribe(DLQ, "dlq-" + uid(), ack="client-individual")
    deadline = time.monotonic() + timeout
    found = None
    bad = []
    while time.monotonic() < deadline:
        try:
            m = d.rec.messages.get(timeout=max(0.05, deadline - time.monotonic()))
        except queue.Empty:
            break
        if m.body in forbidden or m.body == body:
            d.conn.ack(m.headers["ack"])
            if m.body == body:
                found = m
                if forbidden:
                    # the DLQ holds persistent and non-persistent messages in
                    # separate cursors: no ordering between them, so drain
                    deadline = min(deadline, time.monotonic() + QUIET)
                    continue
                break
            bad.append(m)
    d.sync()  # make sure our ACKs were processed
    d.disconnect()
    assert not bad, "must not be dead-lettered: %r" % [(m.body, m.headers) for m in bad]
    assert found is not None, "message %r did not show up on %s within %.1fs" % (body, DLQ, timeout)
    return found


def test_ack_client_individual_ack_and_nack_goes_to_dlq(client):
    q = queue_name("indiv")
    c = client()
    keep = "indiv-ack-" + uid()
    dead = "indiv-nack-" + uid()
    other = "indiv-later-" + uid()
    for body in (keep, dead, other):
        c.send(q, body, headers={"persistent": "true", "x-marker": "dlq-test"})
    c.subscribe(q, "s1", ack="client-individual")
    m_keep, m_dead, m_other = c.rec.get_n(3)
    assert [m_keep.body, m_dead.body, m_other.body] == [keep, dead, other]

    # individual ACK of the 1st, NACK of the 2nd; the 3rd stays unacked
    c.conn.ack(m_keep.headers["ack"], receipt="r-ack")
    c.conn.nack(m_dead.headers["ack"], receipt="r-nack")
    c.rec.wait_receipt("r-ack")
    c.rec.wait_receipt("r-nack")
    assert c.rec.errors == []
    c.disconnect()

    # Only the never-acked 3rd message comes back (acks are not cumulative
    # in client-individual mode, and the NACKed one is gone).
    c2 = client()
    c2.subscribe(q, "s2", ack="client-individual")
    back = c2.rec.get()
    assert back.body == other
    assert back.headers.get("redelivered") == "true"
    c2.conn.ack(back.headers["ack"], receipt="r-ack2")
    c2.rec.wait_receipt("r-ack2")
    assert_nothing(c2, "neither the ACKed nor the NACKed message may come back")
    c2.disconnect()

    # The NACKed persistent message was dead-lettered at once (ActiveMQ treats
    # a STOMP NACK as a poison ack: no redelivery attempts first).
    d = _take_from_dlq(client, dead)
    h = d.headers
    assert h["destination"] == DLQ
    # what ActiveMQ 5.17 puts on a dead letter, as seen by a STOMP consumer:
    assert h.get("original-destination") == q, h
    assert h.get("originalExpiration") == "0", h
    assert h.get("persistent") == "true", h
    assert h.get("message-id") == m_dead.headers["message-id"], h
    assert h.get("x-marker") == "dlq-test", h  # user headers survive
    assert "redelivered" not in h, h


def test_nack_of_non_persistent_message_is_discarded(client):
    # ActiveMQ only dead-letters persistent messages (default
    # processNonPersistent=false): a NACKed non-persistent message is dropped.
    q = queue_name("nacknp")
    c = client()
    np_body = "nack-nonpersistent-" + uid()
    p_body = "nack-persistent-" + uid()
    c.send(q, np_body)  # STOMP messages are non-persistent by default
    c.send(q, p_body, headers={"persistent": "true"})
    c.subscribe(q, "s1", ack="client-individual")
    # NB: ActiveMQ keeps persistent and non-persistent messages of a queue in
    # separate cursors, so their relative order is NOT preserved.
    got = {m.body: m for m in c.rec.get_n(2)}
    assert sorted(got) == sorted([np_body, p_body])
    m_np, m_p = got[np_body], got[p_body]
    assert "persistent" not in m_np.headers, sorted(m_np.headers.items())
    assert m_p.headers.get("persistent") == "true"
    c.conn.nack(m_np.headers["ack"], receipt="n1")
    c.conn.nack(m_p.headers["ack"], receipt="n2")
    c.rec.wait_receipt("n1")
    c.rec.wait_receipt("n2")
    c.disconnect()

    c2 = client()
    c2.subscribe(q, "s2")
    assert_nothing(c2, "NACKed messages are gone from the queue", 0.5)
    _take_from_dlq(client, p_body, forbidden=(np_body,))


# ---------------------------------------------------------------------------
# transactions
# ---------------------------------------------------------------------------


def test_transaction_commit_delivers(client):
    q = queue_name("txc")
    cons = client()
    cons.subscribe(q, "s1")
    p = client()
    tx = p.conn.begin()
    bodies = ["tx-%d-%s" % (i, uid()) for i in range(3)]
    for body in bodies:
        p.send(q, body, headers={"transaction": tx})
    assert_nothing(cons, "uncommitted transactional sends", 0.5)
    p.conn.commit(tx, headers={"receipt": "commit"})
    p.rec.wait_receipt("commit")
    assert [m.body for m in cons.rec.get_n(3)] == bodies
    assert_nothing(cons, "each committed message once", 0.5)


def test_transaction_abort_delivers_nothing(client):
    q = queue_name("txa")
    cons = client()
    cons.subscribe(q, "s1")
    p = client()
    tx = p.conn.begin()
    p.send(q, "aborted-1", headers={"transaction": tx})
    p.send(q, "aborted-2", headers={"transaction": tx})
    p.conn.abort(tx, headers={"receipt": "abort"})
    p.rec.wait_receipt("abort")
    assert_nothing(cons, "aborted transactional sends")
    # the connection is still usable after ABORT
    after = "after-abort-" + uid()
    p.send(q, after)
    assert cons.rec.get().body == after
    assert_nothing(cons, "only the non-transactional send", 0.5)


def test_transaction_ack_commit_consumes(client):
    q = queue_name("txackc")
    c = client()
    body = "txack-commit-" + uid()
    c.send(q, body, headers={"persistent": "true"})
    c.subscribe(q, "s1", ack="client")
    m = c.rec.get()
    tx = c.conn.begin()
    c.conn.ack(m.headers["ack"], transaction=tx)
    c.conn.commit(tx, headers={"receipt": "commit"})
    c.rec.wait_receipt("commit")
    c.disconnect()
    c2 = client()
    c2.subscribe(q, "s1", ack="client")
    assert_nothing(c2, "ack committed in a transaction")


def test_transaction_ack_then_abort_redelivers(client):
    q = queue_name("txacka")
    c = client()
    body = "txack-abort-" + uid()
    c.send(q, body, headers={"persistent": "true"})
    c.subscribe(q, "s1", ack="client")
    m = c.rec.get()
    tx = c.conn.begin()
    c.conn.ack(m.headers["ack"], transaction=tx)
    c.conn.abort(tx, headers={"receipt": "abort"})
    c.rec.wait_receipt("abort")
    # ActiveMQ does NOT push the message again to the same subscription after
    # ABORT: it just becomes unacknowledged again for that subscription ...
    assert_nothing(c, "ActiveMQ does not re-dispatch on the same subscription after ABORT")
    c.disconnect()
    # ... and once that subscriber is gone it is redelivered, flagged.
    c2 = client()
    c2.subscribe(q, "s1", ack="client")
    again = c2.rec.get()
    assert again.body == body
    assert again.headers.get("redelivered") == "true", again.headers
    assert again.headers["message-id"] == m.headers["message-id"]
    c2.conn.ack(again.headers["ack"], receipt="ack")
    c2.rec.wait_receipt("ack")


# ---------------------------------------------------------------------------
# receipts
# ---------------------------------------------------------------------------


def test_receipts_for_send_subscribe_unsubscribe_disconnect(client):
    q = queue_name("rcpt")
    c = client()

    c.conn.subscribe(q, id="s1", ack="auto", headers={"receipt": "r-sub"})
    c.rec.wait_receipt("r-sub")

    body = "receipted-" + uid()
    c.conn.send(q, body, headers={"receipt": "r-send"})
    c.rec.wait_receipt("r-send")
    assert c.rec.get().body == body

    c.conn.unsubscribe(id="s1", headers={"receipt": "r-unsub"})
    c.rec.wait_receipt("r-unsub")
    # after UNSUBSCRIBE nothing is delivered to this connection any more
    c.conn.send(q, "after-unsubscribe", headers={"receipt": "r-send2"})
    c.rec.wait_receipt("r-send2")
    assert_nothing(c, "after UNSUBSCRIBE", 0.5)

    # DISCONNECT with a receipt: stomp.py waits for the RECEIPT, then closes
    c.conn.disconnect(receipt="r-disc")
    # (stomp.py closes the socket before it tells listeners about the receipt)
    c.rec.wait_receipt("r-disc")
    assert c.rec.disconnected.wait(WAIT)
    assert c.rec.errors == []

    # the message sent after UNSUBSCRIBE is still on the queue
    c2 = client()
    c2.subscribe(q, "s2")
    assert c2.rec.get().body == "after-unsubscribe"


# ---------------------------------------------------------------------------
# heart-beats
# ---------------------------------------------------------------------------


def test_heartbeats_keep_connection_alive(client):
    c = client(version="1.2", heartbeats=(500, 500))
    # ActiveMQ answers heart-beat "<client's cy>,<client's cx>", here 500,500
    assert c.connected_headers.get("heart-beat") == "500,500"
    time.sleep(3.0)
    assert c.conn.is_connected()
    assert not c.rec.disconnected.is_set()
    assert c.rec.heartbeat_timeouts == 0
    # the broker sent heart-beats (every 500 ms) while we were idle
    assert c.rec.heartbeats >= 2, c.rec.heartbeats
    # and the connection still works
    q = queue_name("hb")
    c.subscribe(q, "s1")
    body = "still-alive-" + uid()
    c.send(q, body)
    assert c.rec.get().body == body
    assert c.rec.errors == []


def test_heartbeat_negotiation_asymmetric(client):
    # client: "I send every 1000 ms, I want nothing from you"
    c = client(version="1.2", heartbeats=(1000, 0))
    # ActiveMQ mirrors: it will not send (0), it expects ours every 1000 ms
    assert c.connected_headers.get("heart-beat") == "0,1000"


# ---------------------------------------------------------------------------
# queue semantics
# ---------------------------------------------------------------------------


def test_competing_consumers_each_message_once(client):
    q = queue_name("compete")
    a = client()
    b = client()
    prefetch = {"activemq.prefetchSize": "1"}
    a.subscribe(q, "sa", ack="client-individual", headers=prefetch)
    b.subscribe(q, "sb", ack="client-individual", headers=prefetch)

    p = client()
    bodies = ["compete-%02d-%s" % (i, uid()) for i in range(20)]
    for body in bodies:
        p.send(q, body, receipt=False)
    p.sync()

    seen = {"a": [], "b": []}
    deadline = time.monotonic() + 10
    while len(seen["a"]) + len(seen["b"]) < 20 and time.monotonic() < deadline:
        progressed = False
        for name, c in (("a", a), ("b", b)):
            try:
                m = c.rec.messages.get(timeout=0.05)
            except queue.Empty:
                continue
            progressed = True
            seen[name].append(m.body)
            c.conn.ack(m.headers["ack"])
        if not progressed:
            time.sleep(0.01)
    a.sync()
    b.sync()
    assert_nothing(a, "consumer a got more", 0.5)
    assert_nothing(b, "consumer b got more", 0.0)
    everything = seen["a"] + seen["b"]
    assert sorted(everything) == sorted(bodies), seen
    assert len(set(everything)) == 20
    assert seen["a"] and seen["b"], "both consumers must get a share: %r" % seen


def test_unacked_messages_redelivered_to_other_consumer(client):
    q = queue_name("redeliver")
    bodies = ["unacked-%d-%s" % (i, uid()) for i in range(3)]
    p = client()
    for body in bodies:
        p.send(q, body, headers={"persistent": "true"})

    a = client()
    a.subscribe(q, "sa", ack="client")
    first = a.rec.get_n(3)
    assert [m.body for m in first] == bodies

    b = client()
    b.subscribe(q, "sb", ack="client")
    assert_nothing(b, "messages held by consumer a", 0.5)

    # consumer a vanishes without ACK and without DISCONNECT (TCP close)
    a.kill()

    again = b.rec.get_n(3)
    assert [m.body for m in again] == bodies
    for m in again:
        assert m.headers.get("redelivered") == "true", m.headers
        assert m.headers["subscription"] == "sb"
    b.conn.ack(again[-1].headers["ack"], receipt="ack")
    b.rec.wait_receipt("ack")


# ---------------------------------------------------------------------------
# headers and bodies
# ---------------------------------------------------------------------------


def test_custom_headers_pass_through(client):
    q = queue_name("hdr")
    c = client()
    sent = {
        "x-app-header": "value-1",
        "x_snake": "snake value with spaces",
        "CamelCase": "MiXeD",
        "x-number": "42",
        "correlation-id": "corr-" + uid(),
        "type": "my-type",
        "reply-to": "/queue/reply-" + uid(),
    }
    c.send(q, "with headers", headers=sent)
    c.subscribe(q, "s1")
    m = c.rec.get()
    for k, v in sent.items():
        assert m.headers.get(k) == v, (k, m.headers)


def test_binary_body_with_nul_bytes(client):
    q = queue_name("bin")
    c = client(auto_decode=False)
    body = b"\x00start\x00" + bytes(range(256)) + b"\x00\x00middle\xff\xfe\x00" + bytes(range(255, -1, -1)) + b"\x00"
    # stomp.py adds content-length automatically (auto_content_length=True)
    c.send(q, body)
    c.subscribe(q, "s1")
    m = c.rec.get()
    assert isinstance(m.body, bytes)
    assert m.body == body
    assert m.headers.get("content-length") == str(len(body))


def test_large_5mib_body(client):
    q = queue_name("big")
    c = client(auto_decode=False)
    chunk = bytes(range(256)) * 4  # 1 KiB containing NULs
    body = b"".join(i.to_bytes(4, "big") + chunk[4:] for i in range(5 * 1024))
    assert len(body) == 5 * 1024 * 1024
    c.send(q, body, headers={"persistent": "true"})
    c.subscribe(q, "s1")
    m = c.rec.get(timeout=10)
    assert m.headers.get("content-length") == str(len(body))
    assert len(m.body) == len(body)
    assert m.body == body


# ---------------------------------------------------------------------------
# scheduled delivery (the broker runs with schedulerSupport on)
# ---------------------------------------------------------------------------


def test_scheduled_delay_and_repeat_headers(client):
    q = queue_name("sched")
    c = client()
    c.subscribe(q, "s1")
    started = time.monotonic()
    c.send(q, "later", headers={"AMQ_SCHEDULED_DELAY": "1500", "colour": "red"})
    c.send(q, "now")
    assert c.rec.get().body == "now"
    assert_nothing(c, "before the delay", 0.8)
    m = c.rec.get(timeout=5)
    assert m.body == "later"
    assert time.monotonic() - started >= 1.4
    assert m.headers.get("colour") == "red"
    assert "AMQ_SCHEDULED_DELAY" not in m.headers
    assert m.headers.get("scheduledJobId")
    # a period and two repeats: three copies, each its own message id
    c.send(q, "tick", headers={"AMQ_SCHEDULED_PERIOD": "300", "AMQ_SCHEDULED_REPEAT": "2"})
    ticks = c.rec.get_n(3, timeout=6)
    assert [t.body for t in ticks] == ["tick"] * 3
    assert len({t.headers["message-id"] for t in ticks}) == 3
    assert_nothing(c, "after the last repeat", 1.0)


# ---------------------------------------------------------------------------
# STOMP over WebSocket (stomp.py's WSStompConnection) and plain TCP together
# ---------------------------------------------------------------------------


def test_websocket_and_tcp_clients_exchange_messages_with_acks(client):
    q = queue_name("ws")
    ws = client(ws=True)
    assert ws.connected_headers.get("version") == "1.2"
    tcp = client()
    ws.subscribe(q, "w1", ack="client-individual")
    body = "über WebSocket " + uid()
    tcp.send(q, body, headers={"x-trace": "t-1"})
    m = ws.rec.get()
    assert m.body == body
    assert m.headers.get("x-trace") == "t-1"
    ws.conn.ack(m.headers["ack"], receipt="acked")
    ws.rec.wait_receipt("acked")
    # and back: what the WebSocket client sends, the TCP client gets
    q2 = queue_name("ws-back")
    tcp.subscribe(q2, "t1")
    ws.send(q2, "back " + body)
    assert tcp.rec.get().body == "back " + body
    # the acked message is gone: a new consumer gets nothing
    ws.disconnect()
    again = client()
    again.subscribe(q, "again")
    assert_nothing(again, "after the ack")


def test_websocket_transactions_binary_and_large_bodies(client):
    q = queue_name("ws-tx")
    ws = client(ws=True, auto_decode=False)
    ws.subscribe(q, "s1")
    ws.conn.begin("tx1")
    ws.conn.send(q, b"in tx", transaction="tx1")
    assert_nothing(ws, "before the commit", 0.3)
    ws.conn.commit("tx1")
    assert ws.rec.get().body == b"in tx"
    binary = b"\x00\xff\xfe\x00" + bytes(range(256))
    ws.send(q, binary)
    m = ws.rec.get()
    assert m.body == binary
    big = bytes(range(256)) * (8 * 1024)  # 2 MiB with NULs
    ws.send(q, big)
    assert ws.rec.get(timeout=10).body == big


def test_websocket_heartbeats_keep_the_connection_alive(client):
    ws = client(ws=True, heartbeats=(300, 300))
    assert ws.connected_headers.get("heart-beat") == "300,300"
    time.sleep(2.0)
    assert ws.conn.is_connected()
    assert ws.rec.heartbeat_timeouts == 0
    assert ws.rec.heartbeats >= 2, ws.rec.heartbeats
    q = queue_name("ws-hb")
    ws.subscribe(q, "s1")
    ws.send(q, "alive")
    assert ws.rec.get().body == "alive"


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_unicode_and_escaped_header_values(client, version):
    q = queue_name("esc")
    c = client(version=version)
    sent = {
        "x-unicode": "h\u00e9llo w\u00f6rld \u2713 \u65e5\u672c\u8a9e \U0001F680",
        "x-colon": "a:b::c",
        "x-newline": "line1\nline2\n",
        "x-backslash": "back\\slash\\\\double",
        "x-mixed": "key:value\nk2:v2\\end",
    }
    body = "unicode body \u00e9\u2713\U0001F680 " + uid()
    c.send(q, body, headers=sent)
    c.subscribe(q, "s1")
    m = c.rec.get()
    assert m.body == body
    for k, v in sent.items():
        assert m.headers.get(k) == v, (k, m.headers.get(k), v)


# ---------------------------------------------------------------------------
# durable topic subscriptions
# ---------------------------------------------------------------------------


def test_durable_topic_subscription(client):
    t = topic_name("durable")
    client_id = "interop-py-" + uid()
    sub_name = "sub-" + uid()
    durable = {"activemq.subscriptionName": sub_name}

    c = client(headers={"client-id": client_id})
    c.subscribe(t, "d1", headers=durable)
    c.disconnect()  # goes offline; the durable subscription stays

    p = client()
    bodies = ["durable-%d-%s" % (i, uid()) for i in range(3)]
    for body in bodies:
        p.send(t, body, headers={"persistent": "true"})

    # same client-id + subscription name: the offline messages are waiting
    c2 = client(headers={"client-id": client_id})
    c2.subscribe(t, "d2", headers=durable)
    got = c2.rec.get_n(3)
    assert [m.body for m in got] == bodies
    assert all(m.headers["subscription"] == "d2" for m in got)
    assert_nothing(c2, "durable subscriber gets each message once", 0.5)

    # Clean up. ActiveMQ needs two steps: a plain UNSUBSCRIBE closes the
    # consumer (the durable subscription stays, offline); an UNSUBSCRIBE with
    # activemq.subscriptionName then destroys it. Sending the latter while the
    # consumer is still open gives ERROR "Durable consumer is in use".
    c2.conn.unsubscribe(id="d2", headers={"receipt": "unsub1"})
    c2.rec.wait_receipt("unsub1")
    c2.conn.unsubscribe(id="d2", headers=dict(durable, receipt="unsub2"))
    c2.rec.wait_receipt("unsub2")
    assert c2.rec.errors == []
    c2.disconnect()

    # the durable subscription is gone: messages published now are not kept
    p.send(t, "after-destroy-" + uid(), headers={"persistent": "true"})
    c3 = client(headers={"client-id": client_id})
    c3.subscribe(t, "d3", headers=durable)
    assert_nothing(c3, "destroyed durable subscription must not retain messages")
    c3.conn.unsubscribe(id="d3", headers={"receipt": "unsub3"})
    c3.rec.wait_receipt("unsub3")
    c3.conn.unsubscribe(id="d3", headers=dict(durable, receipt="unsub4"))
    c3.rec.wait_receipt("unsub4")


# ---------------------------------------------------------------------------
# security: a second broker configured as tests/interop/secure.toml
# (SECURE_STOMP_PORT; for ActiveMQ, tests/interop/secure-activemq.xml)
# ---------------------------------------------------------------------------


def secure_port():
    port = os.environ.get("SECURE_STOMP_PORT")
    assert port, (
        "SECURE_STOMP_PORT is not set: the security tests need a broker configured as "
        "tests/interop/secure.toml (scripts/test.sh starts one)"
    )
    return int(port)


@pytest.mark.parametrize("login,passcode", [("user", "wrong"), ("nobody", "userpw"), (None, None)])
def test_security_wrong_credentials_get_an_error_and_the_connection_closes(login, passcode):
    rec = Recorder()
    conn = stomp.Connection12([(HOST, secure_port())], timeout=WAIT, reconnect_attempts_max=1)
    conn.set_listener("recorder", rec)
    try:
        conn.connect(username=login, passcode=passcode, wait=False)
        assert rec.connected.wait(10), "no answer to CONNECT"
        assert rec.connected_frame is None, "connected with wrong credentials"
        assert [e.headers.get("message") for e in rec.errors] == [
            "User name [%s] or password is invalid." % (login or "null")
        ]
        assert rec.disconnected.wait(WAIT), "the broker closes the connection"
    finally:
        try:
            conn.transport.disconnect_socket()
        except Exception:
            pass


def test_security_send_and_subscribe_are_checked(client):
    port = secure_port()
    user = client(headers={"login": "user", "passcode": "userpw"}, port=port)
    admin_only = "/queue/ADMIN.py-" + uid()
    user.conn.send(admin_only, "x", headers={"receipt": "w1"})
    user.conn.subscribe("/queue/ADMIN.py-" + uid(), id="s1", headers={"receipt": "r1"})
    deadline = time.monotonic() + WAIT
    while len(user.rec.errors) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    errors = [(e.headers.get("receipt-id"), e.headers.get("message")) for e in user.rec.errors]
    assert errors[0] == ("w1", "User user is not authorized to write to: queue://" + admin_only[7:])
    assert errors[1][0] == "r1"
    assert errors[1][1].startswith("User user is not authorized to read from: queue://ADMIN.py-")
    assert not user.rec.has_receipt("w1") and not user.rec.has_receipt("r1")
    # Refusals leave the connection working where the user may go.
    mine = "/queue/USERS.py-" + uid()
    user.subscribe(mine, "mine")
    user.send(mine, "hello")
    assert user.rec.get().body == "hello"
    # A READONLY queue: read (once an admin made it), never written.
    admin = client(headers={"login": "admin", "passcode": "adminpw"}, port=port)
    readonly = "/queue/READONLY.py-" + uid()
    admin.send(readonly, "from the admin")
    user.subscribe(readonly, "ro")
    assert user.rec.get().body == "from the admin"
    user.conn.send(readonly, "x", headers={"receipt": "w2"})
    deadline = time.monotonic() + WAIT
    while len(user.rec.errors) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (user.rec.errors[2].headers.get("receipt-id"), user.rec.errors[2].headers.get("message")) == (
        "w2",
        "User user is not authorized to write to: queue://" + readonly[7:],
    )


def test_consumer_priority_header(client):
    """activemq.priority: a subscriber of a higher priority is offered
    messages first; a lower one gets what it has no room for."""
    q = queue_name("prio")
    c = client()
    c.subscribe(q, "low", ack="client-individual", headers={"activemq.prefetchSize": "2"})
    c.subscribe(
        q,
        "high",
        ack="client-individual",
        headers={"activemq.prefetchSize": "2", "activemq.priority": "9"},
    )
    p = client()
    bodies = ["p%d-%s" % (i, uid()) for i in range(4)]
    for b in bodies:
        p.send(q, b)
    got = c.rec.get_n(4)
    by_sub = {}
    for m in got:
        by_sub.setdefault(m.headers["subscription"], []).append(m.body)
    assert by_sub == {"high": bodies[:2], "low": bodies[2:]}
