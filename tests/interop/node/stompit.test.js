'use strict';
// STOMP interoperability tests driven by the third-party `stompit` client.
//
// They describe the behaviour of Apache ActiveMQ 5.17 as seen through stompit;
// ferromq has to behave the same way. Validated against a real ActiveMQ
// 5.17.2 (see scripts/activemq-local.sh).
//
// Broker address: env STOMP_HOST (default 127.0.0.1), STOMP_PORT (default 61613).
//
//   cd tests/interop/node && npm ci && STOMP_PORT=62613 npm test
//
// Every test uses fresh uuid destination names, every wait is bounded
// (single waits <= 10 s, 30 s per test), and every connection a test opens is
// closed in afterEach.

const { test, afterEach } = require('node:test');
const assert = require('node:assert');
const stompit = require('stompit');
const { WAIT, QUIET, uid, sleep, withTimeout, Inbox } = require('./support');

const HOST = process.env.STOMP_HOST || '127.0.0.1';
const PORT = parseInt(process.env.STOMP_PORT || '61613', 10);

const TEST_TIMEOUT = 30000;
const DLQ = '/queue/ActiveMQ.DLQ';

const queueName = (tag) => `/queue/interop-node-${tag}-${uid()}`;
const topicName = (tag) => `/topic/interop-node-${tag}-${uid()}`;

const open = new Set();

class Conn {
  static async connect(opts = {}) {
    const c = new Conn();
    c.errors = [];
    c.closed = false;
    c.client = await withTimeout(
      new Promise((resolve, reject) => {
        const client = stompit.connect(
          {
            host: HOST,
            port: PORT,
            timeout: WAIT,
            connectHeaders: { host: 'localhost', ...(opts.connectHeaders || {}) },
            ...(opts.heartbeat ? { heartbeat: opts.heartbeat } : {}),
          },
          (err) => (err ? reject(err) : resolve(client)),
        );
        c.rawClient = client;
      }),
      10000,
      'CONNECT',
    ).catch((e) => {
      if (c.rawClient) c.rawClient.destroy();
      throw e;
    });
    c.client.on('error', (e) => {
      c.errors.push(e);
      c.closed = true; // stompit destroys the connection on any error
    });
    c.client.on('end', () => {
      c.closed = true;
    });
    open.add(c);
    return c;
  }

  get connectedHeaders() {
    return this.client.headers;
  }

  // SEND (text or Buffer body) and wait for its RECEIPT
  send(destination, body, headers = {}) {
    return withTimeout(
      new Promise((resolve, reject) => {
        const frame = this.client.send(
          { destination, ...headers },
          { onReceipt: resolve, onError: reject },
        );
        frame.end(body);
      }),
      WAIT,
      `RECEIPT for SEND to ${destination}`,
    );
  }

  // SUBSCRIBE with a RECEIPT (stompit's subscribe() has no receipt option,
  // so register the handler with setImplicitSubscription and send the frame
  // ourselves). Resolves to the Inbox once the broker confirmed it.
  subscribe(destination, { id = 'sub-' + uid(), ack = 'auto', headers = {} } = {}) {
    const inbox = new Inbox();
    inbox.id = id;
    this.client.setImplicitSubscription(id, ack, (err, message) => {
      if (err) return; // connection gone; the test will notice
      const chunks = [];
      message.on('data', (chunk) => chunks.push(chunk));
      message.on('end', () => {
        const body = Buffer.concat(chunks);
        inbox.push({ headers: message.headers, body, text: body.toString('utf8'), message });
      });
    });
    return withTimeout(
      new Promise((resolve, reject) => {
        this.client
          .sendFrame(
            'SUBSCRIBE',
            { destination, id, ack, ...headers },
            { onReceipt: () => resolve(inbox), onError: reject },
          )
          .end();
      }),
      WAIT,
      `RECEIPT for SUBSCRIBE to ${destination}`,
    );
  }

  // any frame with a receipt, e.g. UNSUBSCRIBE / COMMIT / ABORT
  frameWithReceipt(command, headers = {}) {
    return withTimeout(
      new Promise((resolve, reject) => {
        this.client.sendFrame(command, headers, { onReceipt: resolve, onError: reject }).end();
      }),
      WAIT,
      `RECEIPT for ${command}`,
    );
  }

  ack(msg, headers = {}) {
    return withTimeout(
      new Promise((resolve, reject) => {
        this.client.ack(msg.message, headers, { onReceipt: resolve, onError: reject });
      }),
      WAIT,
      'RECEIPT for ACK',
    );
  }

  nack(msg, headers = {}) {
    return withTimeout(
      new Promise((resolve, reject) => {
        this.client.nack(msg.message, headers, { onReceipt: resolve, onError: reject });
      }),
      WAIT,
      'RECEIPT for NACK',
    );
  }

  // graceful DISCONNECT; stompit waits for the DISCONNECT receipt
  async disconnect() {
    if (this.closed) return;
    try {
      await withTimeout(
        new Promise((resolve, reject) => this.client.disconnect((err) => (err ? reject(err) : resolve()))),
        WAIT,
        'DISCONNECT receipt',
      );
    } finally {
      this.closed = true;
      this.client.destroy();
      open.delete(this);
    }
  }

  // drop the TCP connection without DISCONNECT
  kill() {
    this.closed = true;
    this.client.destroy();
    open.delete(this);
  }
}

afterEach(async () => {
  const conns = [...open];
  open.clear();
  await Promise.all(
    conns.map((c) => c.disconnect().catch(() => c.kill())),
  );
});

function assertNoErrors(c) {
  assert.deepStrictEqual(c.errors.map((e) => e.message), []);
}

async function assertNothing(inbox, what, ms = QUIET) {
  const extra = await inbox.quiet(ms);
  assert.deepStrictEqual(extra.map((m) => m.text), [], what);
}

// ---------------------------------------------------------------------------

test('queue send/receive', { timeout: TEST_TIMEOUT }, async () => {
  const q = queueName('basic');
  const c = await Conn.connect();
  // stompit offers accept-version 1.0,1.1,1.2; the broker picks 1.2
  assert.strictEqual(c.connectedHeaders.version, '1.2');
  const body = `hello from stompit ${uid()}`;
  await c.send(q, body, { 'x-from': 'stompit' });
  const inbox = await c.subscribe(q, { id: 's1' });
  const m = await inbox.next();
  assert.strictEqual(m.text, body);
  assert.strictEqual(m.headers.destination, q);
  assert.strictEqual(m.headers.subscription, 's1');
  assert.strictEqual(m.headers['x-from'], 'stompit');
  assert.ok(m.headers['message-id']);
  await assertNothing(inbox, 'exactly one message', 300);
  assertNoErrors(c);
});

test('topic fan-out to two subscribers', { timeout: TEST_TIMEOUT }, async () => {
  const t = topicName('fanout');
  const a = await Conn.connect();
  const b = await Conn.connect();
  const ia = await a.subscribe(t, { id: 'a' });
  const ib = await b.subscribe(t, { id: 'b' });
  const p = await Conn.connect();
  const bodies = [0, 1, 2].map((i) => `fanout-${i}-${uid()}`);
  for (const body of bodies) await p.send(t, body);
  for (const [inbox, id] of [[ia, 'a'], [ib, 'b']]) {
    const got = await inbox.take(3);
    assert.deepStrictEqual(got.map((m) => m.text), bodies);
    for (const m of got) {
      assert.strictEqual(m.headers.destination, t);
      assert.strictEqual(m.headers.subscription, id);
    }
  }
  await assertNothing(ia, 'subscriber a: nothing more', 300);
  await assertNothing(ib, 'subscriber b: nothing more', 0);
});

test('ack mode auto: delivered messages are consumed', { timeout: TEST_TIMEOUT }, async () => {
  const q = queueName('auto');
  const c = await Conn.connect();
  const bodies = [0, 1].map((i) => `auto-${i}-${uid()}`);
  for (const body of bodies) await c.send(q, body);
  const inbox = await c.subscribe(q, { ack: 'auto' });
  assert.deepStrictEqual((await inbox.take(2)).map((m) => m.text), bodies);
  await c.disconnect();

  const c2 = await Conn.connect();
  const inbox2 = await c2.subscribe(q, { ack: 'auto' });
  await assertNothing(inbox2, 'auto-acked messages are not redelivered');
});

test('ack mode client: cumulative ack, rest redelivered', { timeout: TEST_TIMEOUT }, async () => {
  const q = queueName('client');
  const c = await Conn.connect();
  const bodies = [0, 1, 2, 3, 4].map((i) => `client-${i}-${uid()}`);
  for (const body of bodies) await c.send(q, body, { persistent: 'true' });
  const inbox = await c.subscribe(q, { ack: 'client' });
  const got = await inbox.take(5);
  assert.deepStrictEqual(got.map((m) => m.text), bodies);
  for (const m of got) assert.strictEqual(m.headers.redelivered, undefined);
  await c.ack(got[2]); // acks 1..3
  await c.disconnect();

  const c2 = await Conn.connect();
  const inbox2 = await c2.subscribe(q, { ack: 'client' });
  const again = await inbox2.take(2);
  assert.deepStrictEqual(again.map((m) => m.text), bodies.slice(3));
  for (const m of again) assert.strictEqual(m.headers.redelivered, 'true');
  await assertNothing(inbox2, 'only the 2 unacked messages come back');
  await c2.ack(again[1]);
});

async function takeFromDlq(body) {
  // client-individual: ack only our own dead letter, leave the rest alone
  const d = await Conn.connect();
  const inbox = await d.subscribe(DLQ, { ack: 'client-individual' });
  const deadline = Date.now() + 8000;
  while (Date.now() < deadline) {
    let m;
    try {
      m = await inbox.next(deadline - Date.now());
    } catch (e) {
      break;
    }
    if (m.text === body) {
      await d.ack(m);
      await d.disconnect();
      return m;
    }
  }
  await d.disconnect();
  throw new Error(`${body} did not show up on ${DLQ}`);
}

test('ack mode client-individual: ack one, nack one (to DLQ)', { timeout: TEST_TIMEOUT }, async () => {
  const q = queueName('indiv');
  const c = await Conn.connect();
  const keep = `keep-${uid()}`;
  const dead = `dead-${uid()}`;
  const later = `later-${uid()}`;
  for (const body of [keep, dead, later]) await c.send(q, body, { persistent: 'true' });
  const inbox = await c.subscribe(q, { ack: 'client-individual' });
  const [mKeep, mDead, mLater] = await inbox.take(3);
  assert.deepStrictEqual([mKeep.text, mDead.text, mLater.text], [keep, dead, later]);
  await c.ack(mKeep);
  await c.nack(mDead);
  assertNoErrors(c);
  await c.disconnect();

  // only the untouched 3rd message is redelivered
  const c2 = await Conn.connect();
  const inbox2 = await c2.subscribe(q, { ack: 'client-individual' });
  const back = await inbox2.next();
  assert.strictEqual(back.text, later);
  assert.strictEqual(back.headers.redelivered, 'true');
  await c2.ack(back);
  await assertNothing(inbox2, 'neither the ACKed nor the NACKed message comes back');
  await c2.disconnect();

  // the NACKed persistent message went straight to ActiveMQ.DLQ
  const d = await takeFromDlq(dead);
  assert.strictEqual(d.headers.destination, DLQ);
  assert.strictEqual(d.headers['original-destination'], q);
  assert.strictEqual(d.headers.persistent, 'true');
  assert.strictEqual(d.headers['message-id'], mDead.headers['message-id']);
});

test('transaction commit delivers', { timeout: TEST_TIMEOUT }, async () => {
  const q = queueName('txc');
  const cons = await Conn.connect();
  const inbox = await cons.subscribe(q);
  const p = await Conn.connect();
  const tx = p.client.begin();
  const bodies = [0, 1, 2].map((i) => `tx-${i}-${uid()}`);
  for (const body of bodies) tx.send({ destination: q }).end(body);
  await assertNothing(inbox, 'nothing before COMMIT', 500);
  await withTimeout(new Promise((resolve) => tx.commit({ onReceipt: resolve })), WAIT, 'COMMIT receipt');
  assert.deepStrictEqual((await inbox.take(3)).map((m) => m.text), bodies);
  await assertNothing(inbox, 'each committed message once', 300);
  assertNoErrors(p);
});

test('transaction abort delivers nothing', { timeout: TEST_TIMEOUT }, async () => {
  const q = queueName('txa');
  const cons = await Conn.connect();
  const inbox = await cons.subscribe(q);
  const p = await Conn.connect();
  const tx = p.client.begin();
  tx.send({ destination: q }).end('aborted-1');
  tx.send({ destination: q }).end('aborted-2');
  await withTimeout(new Promise((resolve) => tx.abort({ onReceipt: resolve })), WAIT, 'ABORT receipt');
  await assertNothing(inbox, 'aborted sends are discarded');
  const after = `after-abort-${uid()}`;
  await p.send(q, after);
  assert.strictEqual((await inbox.next()).text, after);
  assertNoErrors(p);
});

test('receipts for SEND, SUBSCRIBE, UNSUBSCRIBE, DISCONNECT', { timeout: TEST_TIMEOUT }, async () => {
  const q = queueName('rcpt');
  const c = await Conn.connect();
  const inbox = await c.subscribe(q, { id: 'r1' }); // waits for its RECEIPT
  const body = `receipted-${uid()}`;
  await c.send(q, body); // waits for its RECEIPT
  assert.strictEqual((await inbox.next()).text, body);
  await c.frameWithReceipt('UNSUBSCRIBE', { id: 'r1' });
  await c.send(q, 'after-unsubscribe');
  await assertNothing(inbox, 'nothing after UNSUBSCRIBE', 500);
  // stompit's disconnect() completes only when the DISCONNECT receipt arrived
  // (otherwise it fails with "connection ended without disconnect receipt")
  await c.disconnect();
  assertNoErrors(c);

  const c2 = await Conn.connect();
  const inbox2 = await c2.subscribe(q);
  assert.strictEqual((await inbox2.next()).text, 'after-unsubscribe');
});

test('heart-beats keep an idle connection alive', { timeout: TEST_TIMEOUT }, async () => {
  const c = await Conn.connect({ heartbeat: [500, 500] });
  // ActiveMQ answers "<client's cy>,<client's cx>"
  assert.strictEqual(c.connectedHeaders['heart-beat'], '500,500');
  const sock = c.client.getTransportSocket();
  const before = sock.bytesRead;
  await sleep(3000);
  // stompit would have destroyed the connection ("connection timed out") had
  // the broker stopped sending; the broker would have closed it had we not
  assert.strictEqual(c.closed, false);
  assertNoErrors(c);
  assert.ok(sock.bytesRead - before >= 2, `broker heart-beats received: ${sock.bytesRead - before} bytes`);
  const q = queueName('hb');
  const inbox = await c.subscribe(q);
  const body = `alive-${uid()}`;
  await c.send(q, body);
  assert.strictEqual((await inbox.next()).text, body);
});

test('binary body with NUL bytes (content-length)', { timeout: TEST_TIMEOUT }, async () => {
  const q = queueName('bin');
  const c = await Conn.connect();
  const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  const body = Buffer.concat([Buffer.from([0, 0]), all, Buffer.from('\0mid\0'), Buffer.from(all).reverse(), Buffer.from([0])]);
  // stompit does not add content-length itself; without it the first NUL
  // would end the frame
  await c.send(q, body, { 'content-length': String(body.length), 'content-type': 'application/octet-stream' });
  const inbox = await c.subscribe(q);
  const m = await inbox.next();
  assert.strictEqual(m.headers['content-length'], body.length);
  assert.ok(m.body.equals(body), 'body differs');
});
