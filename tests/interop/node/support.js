'use strict';
// What both node suites share: names, bounded waits, and an inbox that
// queues what a subscription receives.

const { randomUUID } = require('node:crypto');

const WAIT = 5000; // "this must arrive" bound
const QUIET = 1000; // listen this long to conclude "nothing (more) arrives"

const uid = () => randomUUID().replace(/-/g, '');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// A subscription's inbox: every MESSAGE body is read completely as soon as it
// arrives (stompit does not deliver the next frame before that) and queued.
class Inbox {
  constructor() {
    this.items = [];
    this.waiters = [];
  }

  push(item) {
    const w = this.waiters.shift();
    if (w) w(item);
    else this.items.push(item);
  }

  next(ms = WAIT) {
    if (this.items.length) return Promise.resolve(this.items.shift());
    let waiter;
    const p = new Promise((resolve) => {
      waiter = resolve;
      this.waiters.push(resolve);
    });
    return withTimeout(p, ms, 'waiting for a MESSAGE').catch((e) => {
      this.waiters = this.waiters.filter((w) => w !== waiter);
      throw e;
    });
  }

  async take(n, ms = WAIT) {
    const deadline = Date.now() + ms;
    const out = [];
    while (out.length < n) {
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`got ${out.length} of ${n} messages: ${out.map((m) => m.text).join(', ')}`);
      }
      out.push(await this.next(left));
    }
    return out;
  }

  // everything that arrives within `ms`
  async quiet(ms = QUIET) {
    await sleep(ms);
    return this.items.splice(0);
  }
}

module.exports = { WAIT, QUIET, uid, sleep, withTimeout, Inbox };
