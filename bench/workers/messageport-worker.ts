/**
 * MessagePort baseline: two workers joined by a `MessageChannel` made per run.
 * The payload is a 112-byte `Uint8Array` (copied by structured clone, not
 * transferred); responses are 16-byte `Uint8Array`s. The `id` sits where
 * `blkif_request.id` / `blkif_response.id` sit.
 *
 * One way (`sender` drives, `receiver` counts): the sender keeps at most `inFlight`
 * messages undelivered. The receiver publishes its count in the control block's
 * CONSUMED word; when the window is full the sender arms WAKE_AT (the count at
 * which half the window is free, as an event index) and sleeps in `Atomics.wait`
 * on CONSUMED, which the receiver notifies when its count reaches WAKE_AT.
 *
 * Round trip (`requester` drives, `responder` echoes): the requester keeps
 * `inFlight` requests outstanding on the event loop; each response sends the next
 * request. Every 64th request is timed.
 */
import type { MessagePort } from 'node:worker_threads';
import { BLKIF_REQUEST, BLKIF_RESPONSE } from '../../rings/blkif.ts';
import { CTL, WAIT_SLICE_MS, RunWindow, cpuUs, serve, takeSamples, type DriverResult, type WorkerRequest } from './common.ts';

const REQ_ID = BLKIF_REQUEST.fields.id.offset;
const RSP_ID = BLKIF_RESPONSE.fields.id.offset;

/** Arguments of a run. */
export interface MessagePortArgs {
  port: MessagePort;
  ctl: SharedArrayBuffer;
  inFlight: number;
  warmupMs: number;
  measureMs: number;
  timeoutMs: number;
  rttSampleMask: number;
  maxSamples: number;
}

/** Reads a little-endian u32 from bytes (no DataView allocation per message). */
function u32(b: Uint8Array, off: number): number {
  return (b[off] | (b[off + 1] << 8) | (b[off + 2] << 16) | (b[off + 3] << 24)) >>> 0;
}

function putU32(b: Uint8Array, off: number, v: number): void {
  b[off] = v & 0xff;
  b[off + 1] = (v >>> 8) & 0xff;
  b[off + 2] = (v >>> 16) & 0xff;
  b[off + 3] = (v >>> 24) & 0xff;
}

/** One-way driver: posts messages, at most `inFlight` not yet consumed. Synchronous. */
function sender(a: MessagePortArgs): DriverResult {
  const ctl = new Int32Array(a.ctl);
  const msg = new Uint8Array(BLKIF_REQUEST.size);
  const W = a.inFlight;
  const win = new RunWindow(a.warmupMs, a.measureMs, a.timeoutMs);
  let sent = 0, m0ops = 0, m0cpu = 0, m0t = 0;
  try {
    for (;;) {
      const consumed = Atomics.load(ctl, CTL.CONSUMED);
      while (sent - consumed < W) {
        putU32(msg, REQ_ID, sent);
        a.port.postMessage(msg);
        sent++;
      }
      const now = performance.now();
      if (now > win.hardEnd) throw new Error('messageport sender: past its deadline');
      const t = win.tick(now);
      if (t === 1) {
        m0t = now; m0ops = Atomics.load(ctl, CTL.CONSUMED); m0cpu = cpuUs();
      } else if (t === 2) {
        return {
          ops: Atomics.load(ctl, CTL.CONSUMED) - m0ops, elapsedNs: (now - m0t) * 1e6, rttNs: new Float64Array(0),
          notifications: null, wakeups: null, cpuUs: cpuUs() - m0cpu,
        };
      }
      // Window full: ask to be woken when half of it is free, then re-check before sleeping.
      const target = sent - W + Math.max(1, W >> 1);
      Atomics.store(ctl, CTL.WAKE_AT, target);
      const c = Atomics.load(ctl, CTL.CONSUMED);
      if (c < target) Atomics.wait(ctl, CTL.CONSUMED, c, WAIT_SLICE_MS);
    }
  } finally {
    a.port.close();
  }
}

/** One-way consumer: counts messages on the event loop until the port closes. */
function receiver(a: MessagePortArgs): null {
  const ctl = new Int32Array(a.ctl);
  let n = 0;
  let lastId = -1;
  a.port.on('message', (m: Uint8Array) => {
    const id = u32(m, REQ_ID);
    if (id !== lastId + 1) throw new Error(`messageport receiver: id ${id} after ${lastId}`);
    lastId = id;
    n++;
    Atomics.store(ctl, CTL.CONSUMED, n);
    if (n === Atomics.load(ctl, CTL.WAKE_AT)) Atomics.notify(ctl, CTL.CONSUMED, 1);
  });
  a.port.once('close', () => a.port.removeAllListeners('message'));
  return null;
}

/** Round-trip driver: `inFlight` requests outstanding, on the event loop. */
function requester(a: MessagePortArgs): Promise<DriverResult> {
  const msg = new Uint8Array(BLKIF_REQUEST.size);
  const W = a.inFlight;
  const sampleMask = a.rttSampleMask;
  const samples = new Float64Array(a.maxSamples);
  const sentAt = new Map<number, number>();
  let nSamples = 0, sent = 0, done = 0, m0ops = 0, m0cpu = 0, m0t = 0;
  const win = new RunWindow(a.warmupMs, a.measureMs, a.timeoutMs);
  return new Promise<DriverResult>((resolve, reject) => {
    const finish = (err: Error | null, r?: DriverResult) => {
      clearTimeout(timer);
      a.port.removeAllListeners('message');
      a.port.close();
      if (err) reject(err);
      else resolve(r!);
    };
    const timer = setTimeout(() => finish(new Error('messageport requester: past its deadline')), win.hardEnd - performance.now());
    const send = () => {
      putU32(msg, REQ_ID, sent);
      if ((sent & sampleMask) === 0) sentAt.set(sent, performance.now());
      a.port.postMessage(msg);
      sent++;
    };
    a.port.on('message', (m: Uint8Array) => {
      const id = u32(m, RSP_ID);
      if (id !== done) return finish(new Error(`messageport requester: response ${id} where ${done} was due`));
      const now = performance.now();
      if ((id & sampleMask) === 0) {
        const t = sentAt.get(id)!;
        sentAt.delete(id);
        if (win.measuring && nSamples < samples.length) samples[nSamples++] = (now - t) * 1e6;
      }
      done++;
      const t = win.tick(now);
      if (t === 1) {
        m0t = now; m0ops = done; m0cpu = cpuUs();
      } else if (t === 2) {
        return finish(null, {
          ops: done - m0ops, elapsedNs: (now - m0t) * 1e6, rttNs: takeSamples(samples, nSamples),
          notifications: null, wakeups: null, cpuUs: cpuUs() - m0cpu,
        });
      }
      send();
    });
    for (let i = 0; i < W; i++) send();
  });
}

/** Round-trip responder: answers each request with a 16-byte response carrying its id. */
function responder(a: MessagePortArgs): null {
  const rsp = new Uint8Array(BLKIF_RESPONSE.size);
  a.port.on('message', (m: Uint8Array) => {
    rsp[BLKIF_RESPONSE.fields.operation.offset] = m[BLKIF_REQUEST.fields.operation.offset];
    putU32(rsp, RSP_ID, u32(m, REQ_ID));
    a.port.postMessage(rsp);
  });
  a.port.once('close', () => a.port.removeAllListeners('message'));
  return null;
}

/** Worker entry: serves the four roles. */
export function start(): void {
  serve({
    sender: (r: WorkerRequest) => sender(r.args as MessagePortArgs),
    receiver: (r: WorkerRequest) => receiver(r.args as MessagePortArgs),
    requester: (r: WorkerRequest) => requester(r.args as MessagePortArgs),
    responder: (r: WorkerRequest) => responder(r.args as MessagePortArgs),
  });
}
