/**
 * ringbuf.js 0.4.0 baseline: a single-producer single-consumer byte ring over a
 * SharedArrayBuffer, used as a message queue of fixed-size records. ringbuf.js has
 * no blocking or notification, so both ends busy-poll, each holding a spin token.
 *
 * One way (`producer` drives, `consumer` counts): a ring of `inFlight` × 112 bytes;
 * one 112-byte message per `push`; the consumer pops every whole message available
 * and publishes its count in the control block's CONSUMED word.
 *
 * Round trip as two rings (`requester` drives, `responder` answers): a request ring
 * of `inFlight` × 112 bytes and a response ring of `inFlight` × 16 bytes; the
 * responder pops one request, pushes one 16-byte response carrying its id.
 */
import { RingBuffer } from 'ringbuf.js';
import { SpinTokens } from '../../hypervisor/spin.ts';
import { BLKIF_REQUEST, BLKIF_RESPONSE } from '../../rings/blkif.ts';
import {
  CTL, PHASE_STOP, POLL_CHECK_MASK, RunWindow, acquireSpinToken, cpuUs, serve, takeSamples,
  type DriverResult, type WorkerRequest,
} from './common.ts';

const REQ = BLKIF_REQUEST.size;
const RSP = BLKIF_RESPONSE.size;
const REQ_ID = BLKIF_REQUEST.fields.id.offset;
const RSP_ID = BLKIF_RESPONSE.fields.id.offset;

/** Arguments of a run: the rings come from {@link ringStorage}. */
export interface RingbufArgs {
  /** Request ring (one way: the only ring). */
  reqRing: SharedArrayBuffer;
  /** Response ring (round trip only). */
  rspRing: SharedArrayBuffer | null;
  ctl: SharedArrayBuffer;
  inFlight: number;
  warmupMs: number;
  measureMs: number;
  timeoutMs: number;
  rttSampleMask: number;
  maxSamples: number;
}

type Run = RingbufArgs & { tokens: SpinTokens };

/** Storage for a ringbuf.js byte ring holding `bytes` bytes. */
export function ringStorage(bytes: number): SharedArrayBuffer {
  return RingBuffer.getStorageForCapacity(bytes, Uint8Array);
}

function byteRing(sab: SharedArrayBuffer): RingBuffer {
  return new RingBuffer(sab, Uint8Array);
}

/** One-way driver. */
function producer(a: Run): DriverResult {
  const ctl = new Int32Array(a.ctl);
  const rb = byteRing(a.reqRing);
  const msg = new Uint8Array(REQ);
  const dv = new DataView(msg.buffer);
  const win = new RunWindow(a.warmupMs, a.measureMs, a.timeoutMs);
  acquireSpinToken(a.tokens, win.start + 1000, 'ringbuf.js producer');
  let sent = 0, spins = 0, m0ops = 0, m0cpu = 0, m0t = 0;
  try {
    for (;;) {
      if (rb.availableWrite() >= REQ) {
        dv.setUint32(REQ_ID, sent, true);
        if (rb.push(msg, REQ) !== REQ) throw new Error('ringbuf.js producer: short push');
        sent++;
      }
      if ((++spins & 63) !== 0) continue;
      const now = performance.now();
      if (now > win.hardEnd) throw new Error('ringbuf.js producer: past its deadline');
      const t = win.tick(now);
      if (t === 1) {
        m0t = now; m0ops = Atomics.load(ctl, CTL.CONSUMED); m0cpu = cpuUs();
      } else if (t === 2) {
        return {
          ops: Atomics.load(ctl, CTL.CONSUMED) - m0ops, elapsedNs: (now - m0t) * 1e6, rttNs: new Float64Array(0),
          notifications: null, wakeups: null, cpuUs: cpuUs() - m0cpu,
        };
      }
    }
  } finally {
    Atomics.store(ctl, CTL.PHASE, PHASE_STOP);
    a.tokens.release();
  }
}

/** One-way consumer. */
function consumer(a: Run): null {
  const ctl = new Int32Array(a.ctl);
  const rb = byteRing(a.reqRing);
  const buf = new Uint8Array(a.inFlight * REQ);
  const dv = new DataView(buf.buffer);
  const hardEnd = performance.now() + a.timeoutMs - 500;
  acquireSpinToken(a.tokens, performance.now() + 1000, 'ringbuf.js consumer');
  let n = 0, spins = 0;
  try {
    for (;;) {
      const avail = rb.availableRead();
      if (avail >= REQ) {
        const k = Math.floor(avail / REQ);
        rb.pop(buf, k * REQ);
        for (let i = 0; i < k; i++) {
          if (dv.getUint32(i * REQ + REQ_ID, true) !== ((n + i) >>> 0)) throw new Error('ringbuf.js consumer: out of order');
        }
        n += k;
        Atomics.store(ctl, CTL.CONSUMED, n);
        continue;
      }
      if ((++spins & POLL_CHECK_MASK) === 0) {
        if (Atomics.load(ctl, CTL.PHASE) === PHASE_STOP) return null;
        if (performance.now() > hardEnd) throw new Error('ringbuf.js consumer: past its deadline');
      }
    }
  } finally {
    a.tokens.release();
  }
}

/** Round-trip driver. */
function requester(a: Run): DriverResult {
  const ctl = new Int32Array(a.ctl);
  const reqs = byteRing(a.reqRing);
  const rsps = byteRing(a.rspRing!);
  const msg = new Uint8Array(REQ);
  const dv = new DataView(msg.buffer);
  const rspBuf = new Uint8Array(a.inFlight * RSP);
  const rspDv = new DataView(rspBuf.buffer);
  const W = a.inFlight, sampleMask = a.rttSampleMask;
  const sentAt = new Float64Array(W);
  const samples = new Float64Array(a.maxSamples);
  const win = new RunWindow(a.warmupMs, a.measureMs, a.timeoutMs);
  acquireSpinToken(a.tokens, win.start + 1000, 'ringbuf.js requester');
  let sent = 0, done = 0, nSamples = 0, spins = 0, m0ops = 0, m0cpu = 0, m0t = 0;
  try {
    for (;;) {
      while (sent - done < W && reqs.availableWrite() >= REQ) {
        dv.setUint32(REQ_ID, sent, true);
        if ((sent & sampleMask) === 0) sentAt[sent % W] = performance.now();
        if (reqs.push(msg, REQ) !== REQ) throw new Error('ringbuf.js requester: short push');
        sent++;
      }
      const avail = rsps.availableRead();
      if (avail >= RSP) {
        const k = Math.floor(avail / RSP);
        rsps.pop(rspBuf, k * RSP);
        const measuring = win.measuring;
        for (let i = 0; i < k; i++) {
          const id = rspDv.getUint32(i * RSP + RSP_ID, true);
          if (id !== done) throw new Error(`ringbuf.js requester: response ${id} where ${done} was due`);
          if ((id & sampleMask) === 0 && measuring && nSamples < samples.length) {
            samples[nSamples++] = (performance.now() - sentAt[id % W]) * 1e6;
          }
          done++;
        }
      }
      if ((++spins & 15) !== 0) continue;
      const now = performance.now();
      if (now > win.hardEnd) throw new Error('ringbuf.js requester: past its deadline');
      const t = win.tick(now);
      if (t === 1) {
        m0t = now; m0ops = done; m0cpu = cpuUs();
      } else if (t === 2) {
        return {
          ops: done - m0ops, elapsedNs: (now - m0t) * 1e6, rttNs: takeSamples(samples, nSamples),
          notifications: null, wakeups: null, cpuUs: cpuUs() - m0cpu,
        };
      }
    }
  } finally {
    Atomics.store(ctl, CTL.PHASE, PHASE_STOP);
    a.tokens.release();
  }
}

/** Round-trip responder. */
function responder(a: Run): null {
  const ctl = new Int32Array(a.ctl);
  const reqs = byteRing(a.reqRing);
  const rsps = byteRing(a.rspRing!);
  const req = new Uint8Array(REQ);
  const reqDv = new DataView(req.buffer);
  const rsp = new Uint8Array(RSP);
  const rspDv = new DataView(rsp.buffer);
  const hardEnd = performance.now() + a.timeoutMs - 500;
  acquireSpinToken(a.tokens, performance.now() + 1000, 'ringbuf.js responder');
  let spins = 0;
  try {
    for (;;) {
      if (reqs.availableRead() >= REQ) {
        reqs.pop(req, REQ);
        rspDv.setUint32(RSP_ID, reqDv.getUint32(REQ_ID, true), true);
        rspDv.setUint8(BLKIF_RESPONSE.fields.operation.offset, reqDv.getUint8(BLKIF_REQUEST.fields.operation.offset));
        if (rsps.push(rsp, RSP) !== RSP) throw new Error('ringbuf.js responder: response ring full');
        continue;
      }
      if ((++spins & POLL_CHECK_MASK) === 0) {
        if (Atomics.load(ctl, CTL.PHASE) === PHASE_STOP) return null;
        if (performance.now() > hardEnd) throw new Error('ringbuf.js responder: past its deadline');
      }
    }
  } finally {
    a.tokens.release();
  }
}

/** Worker entry: serves the four roles. */
export function start(workerData: { spinTokens: SharedArrayBuffer }): void {
  const tokens = new SpinTokens(workerData.spinTokens);
  serve({
    producer: (r: WorkerRequest) => producer({ ...(r.args as RingbufArgs), tokens }),
    consumer: (r: WorkerRequest) => consumer({ ...(r.args as RingbufArgs), tokens }),
    requester: (r: WorkerRequest) => requester({ ...(r.args as RingbufArgs), tokens }),
    responder: (r: WorkerRequest) => responder({ ...(r.args as RingbufArgs), tokens }),
  });
}
