'use strict';
// STOMP over WebSocket with the third-party @stomp/stompjs client (what
// browser applications use), on the `ws` WebSocket implementation. The
// other side of the cross-transport tests is stompit over plain TCP.
//
// Broker addresses: env WS_PORT (the broker's WebSocket listener; required)
// and STOMP_PORT (its STOMP listener), host STOMP_HOST (default 127.0.0.1).
//
//   cd tests/interop/node && npm ci && WS_PORT=61614 STOMP_PORT=61613 node --test
//
// Every wait is bounded and every client is deactivated in afterEach.

const { test, afterEach } = require('node:test');
const assert = require('node:assert');
const { Client } = require('@stomp/stompjs');
const WebSocket = require('ws');
const stompit = require('stompit');
const { WAIT, QUIET, uid, sleep, withTimeout, Inbox } = require('./support');

const HOST = process.env.STOMP_HOST || '127.0.0.1';
const WS_PORT = parseInt(process.env.WS_PORT || '', 10);
const STOMP_PORT = parseInt(process.env.STOMP_PORT || '61613', 10);
if (!WS_PORT) {
  throw new Error('WS_PORT is not set: these tests need the broker\'s WebSocket listener');
}

const TEST_TIMEOUT = 30000;

const queueName = (tag) => `/queue/interop-ws-${tag}-${uid()}`;
const topicName = (tag) => `/topic/interop-ws-${tag}-${uid()}`;

// Nothing (more) arrives within `ms`.
async function assertNothing(inbox, what, ms = QUIET) {
  const extra = await inbox.quiet(ms);
  assert.deepStrictEqual(extra.map((m) => m.body), [], what);
}

const open = [];

afterEach(async () => {
  while (open.length) {
    const c = open.pop();
    try {
      await withTimeout(Promise.resolve(c.close()), WAIT, 'close');
    } catch (_) {
      // already gone
    }
  }
});

// A stompjs client over WebSocket, connected; `opts` go to the Client.
async function wsClient(opts = {}) {
  const errors = [];
  const closes = [];
  let socket;
  const client = new Client({
    webSocketFactory: () => {
      socket = new WebSocket(`ws://${HOST}:${WS_PORT}/`, ['v10.stomp', 'v11.stomp', 'v12.stomp']);
      return socket;
    },
    connectHeaders: { login: 'guest', passcode: 'guest' },
    reconnectDelay: 0,
    heartbeatIncoming: 0,
    heartbeatOutgoing: 0,
    debug: () => {},
    ...opts,
  });
  const connected = new Promise((resolve, reject) => {
    client.onConnect = resolve;
    client.onWebSocketError = (e) => reject(new Error(`WebSocket error: ${e.message || e}`));
  });
  client.onStompError = (frame) => errors.push(frame);
  client.onWebSocketClose = (evt) => closes.push(evt);
  client.activate();
  open.push({ close: () => client.deactivate() });
  const frame = await withTimeout(connected, WAIT, 'CONNECTED over WebSocket');
  return { client, frame, errors, closes, socket: () => socket };
}

function subscribe(client, destination, headers = {}) {
  const inbox = new Inbox();
  const sub = client.subscribe(destination, (m) => inbox.push(m), headers);
  return { inbox, sub };
}

// A receipt for a frame stompjs sends with `receipt` set.
function receipt(client, id) {
  return withTimeout(new Promise((resolve) => client.watchForReceipt(id, resolve)), WAIT, `RECEIPT ${id}`);
}

// stompit over plain TCP, for the cross-transport tests.
function tcpClient() {
  return withTimeout(new Promise((resolve, reject) => {
    stompit.connect({ host: HOST, port: STOMP_PORT, connectHeaders: { host: '/', 'accept-version': '1.2', login: 'guest', passcode: 'guest' } },
      (err, c) => (err ? reject(err) : resolve(c)));
  }), WAIT, 'stompit CONNECTED').then((c) => {
    open.push({ close: () => new Promise((r) => c.disconnect(() => r())) });
    return c;
  });
}

function tcpSubscribe(c, destination) {
  const inbox = new Inbox();
  c.subscribe({ destination, ack: 'auto' }, (err, message) => {
    if (err) return;
    message.readString('utf8', (e, body) => inbox.push({ headers: message.headers, body }));
  });
  return inbox;
}

test('stompjs: the WebSocket speaks v12.stomp and a queue round trip keeps the headers', { timeout: TEST_TIMEOUT }, async () => {
  const { client, frame, socket } = await wsClient();
  assert.strictEqual(socket().protocol, 'v12.stomp');
  assert.strictEqual(frame.headers.version, '1.2');
  const q = queueName('roundtrip');
  const { inbox } = subscribe(client, q);
  await sleep(100);
  client.publish({ destination: q, body: 'héllo über WebSocket', headers: { 'x-colour': 'blue', receipt: 'r1' } });
  await receipt(client, 'r1');
  const m = await inbox.next();
  assert.strictEqual(m.body, 'héllo über WebSocket');
  assert.strictEqual(m.headers['x-colour'], 'blue');
  assert.strictEqual(m.headers.destination, q);
  assert.match(m.headers['message-id'], /^ID:/);
});

test('stompjs: WebSocket and TCP clients share queues and topics', { timeout: TEST_TIMEOUT }, async () => {
  const { client } = await wsClient();
  const tcp = await tcpClient();
  const q = queueName('cross');
  const t = topicName('cross');
  // WebSocket to TCP, on a queue.
  const tcpInbox = tcpSubscribe(tcp, q);
  await sleep(200);
  client.publish({ destination: q, body: 'ws to tcp' });
  assert.strictEqual((await tcpInbox.next()).body, 'ws to tcp');
  // TCP to WebSocket, on a topic: every subscriber gets it.
  const a = subscribe(client, t).inbox;
  const b = subscribe(client, t).inbox;
  await sleep(200);
  const frame = tcp.send({ destination: t, 'content-type': 'text/plain' });
  frame.end('tcp to ws');
  assert.strictEqual((await a.next()).body, 'tcp to ws');
  assert.strictEqual((await b.next()).body, 'tcp to ws');
});

test('stompjs: a binary body with NUL bytes and a 1 MiB body arrive whole', { timeout: TEST_TIMEOUT }, async () => {
  const { client } = await wsClient();
  const q = queueName('binary');
  const { inbox } = subscribe(client, q);
  await sleep(100);
  const bytes = new Uint8Array([0, 1, 2, 0, 255, 254, 0, 10, 0]);
  client.publish({ destination: q, binaryBody: bytes, headers: { 'content-type': 'application/octet-stream' } });
  const big = 'ü'.repeat(512 * 1024);
  client.publish({ destination: q, body: big });
  const m1 = await inbox.next();
  assert.deepStrictEqual(Array.from(m1.binaryBody), Array.from(bytes));
  assert.strictEqual(m1.headers['content-length'], String(bytes.length));
  const m2 = await inbox.next();
  assert.strictEqual(m2.body.length, big.length);
  assert.strictEqual(m2.body, big);
});

test('stompjs: client-individual acks, and what is not acked comes back redelivered', { timeout: TEST_TIMEOUT }, async () => {
  const q = queueName('ack');
  const first = await wsClient();
  const { inbox } = subscribe(first.client, q, { ack: 'client-individual' });
  await sleep(100);
  for (const body of ['one', 'two']) first.client.publish({ destination: q, body });
  const one = await inbox.next();
  const two = await inbox.next();
  assert.deepStrictEqual([one.body, two.body], ['one', 'two']);
  one.ack({ receipt: 'acked' });
  await receipt(first.client, 'acked');
  await first.client.deactivate();
  const second = await wsClient();
  const again = subscribe(second.client, q, { ack: 'client-individual' }).inbox;
  const m = await again.next();
  assert.strictEqual(m.body, 'two');
  assert.strictEqual(m.headers.redelivered, 'true');
  m.ack();
  await assertNothing(again, 'after the redelivery');
});

test('stompjs: transactions commit and abort', { timeout: TEST_TIMEOUT }, async () => {
  const { client } = await wsClient();
  const q = queueName('tx');
  const { inbox } = subscribe(client, q);
  await sleep(100);
  const aborted = client.begin();
  client.publish({ destination: q, body: 'aborted', headers: { transaction: aborted.id } });
  aborted.abort();
  const committed = client.begin();
  client.publish({ destination: q, body: 'committed', headers: { transaction: committed.id } });
  await assertNothing(inbox, 'before the commit', 300);
  committed.commit();
  assert.strictEqual((await inbox.next()).body, 'committed');
  await assertNothing(inbox, 'after the commit');
});

test('stompjs: heart-beats keep an idle WebSocket connection alive', { timeout: TEST_TIMEOUT }, async () => {
  const { client, frame, closes } = await wsClient({ heartbeatIncoming: 200, heartbeatOutgoing: 200 });
  assert.strictEqual(frame.headers['heart-beat'], '200,200');
  await sleep(1500);
  assert.strictEqual(closes.length, 0, 'the connection closed while idle');
  assert.ok(client.connected);
  const q = queueName('hb');
  const { inbox } = subscribe(client, q);
  await sleep(100);
  client.publish({ destination: q, body: 'still here' });
  assert.strictEqual((await inbox.next()).body, 'still here');
});

test('stompjs: an ERROR frame reaches the client', { timeout: TEST_TIMEOUT }, async () => {
  const { client, errors } = await wsClient();
  client.commit('no-such-transaction');
  await withTimeout((async () => { while (!errors.length) await sleep(20); })(), WAIT, 'ERROR frame');
  assert.match(errors[0].headers.message, /Invalid transaction id/);
});
