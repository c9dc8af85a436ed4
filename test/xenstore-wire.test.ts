import { describe, expect, it } from 'vitest';
import { ProtocolError } from '../rings/errors.ts';
import {
  MessageDecoder,
  XENSTORE_PAYLOAD_MAX,
  XSD_ERRORS,
  XSD_SOCKMSG,
  XsdSockmsgType,
  encodeMessage,
  isXsErrno,
  nulTerminated,
  splitFirstNul,
  splitNul,
  writePayload,
  xsTypeName,
} from '../xenstore/wire.ts';

const enc = new TextEncoder();

describe('xs_wire constants', () => {
  it('has Xen numbers for message types and the 16-byte header', () => {
    expect(XSD_SOCKMSG.size).toBe(16);
    const f = XSD_SOCKMSG.fields;
    expect([f.type.offset, f.req_id.offset, f.tx_id.offset, f.len.offset]).toEqual([0, 4, 8, 12]);
    expect(XsdSockmsgType.DIRECTORY).toBe(1);
    expect(XsdSockmsgType.WRITE).toBe(11);
    expect(XsdSockmsgType.WATCH_EVENT).toBe(15);
    expect(XsdSockmsgType.ERROR).toBe(16);
    expect(XsdSockmsgType.RESET_WATCHES).toBe(21);
    expect(XsdSockmsgType.SET_QUOTA).toBe(26);
    expect(XENSTORE_PAYLOAD_MAX).toBe(4096);
    expect(xsTypeName(2)).toBe('XS_READ');
    expect(xsTypeName(20)).toBe('XS_20');
    expect(XSD_ERRORS.map((e) => e.name)).toContain('EAGAIN');
    expect(isXsErrno('E2BIG')).toBe(true);
    expect(isXsErrno('EWHAT')).toBe(false);
  });
});

describe('encodeMessage / MessageDecoder', () => {
  it('round-trips a message with little-endian header fields', () => {
    const payload = writePayload('/local/domain/1/name', 'guest');
    const bytes = encodeMessage({ type: XsdSockmsgType.WRITE, reqId: 0xdeadbeef, txId: 7, payload });
    expect(bytes.length).toBe(16 + payload.length);
    const dv = new DataView(bytes.buffer);
    expect(dv.getUint32(0, true)).toBe(11);
    expect(dv.getUint32(4, true)).toBe(0xdeadbeef);
    expect(dv.getUint32(8, true)).toBe(7);
    expect(dv.getUint32(12, true)).toBe(payload.length);
    const msgs = new MessageDecoder().push(bytes);
    expect(msgs).toHaveLength(1);
    expect(msgs[0]).toMatchObject({ type: 11, reqId: 0xdeadbeef, txId: 7 });
    expect(msgs[0].payload).toEqual(payload);
  });

  it('reassembles a 4000-byte payload fed one byte at a time', () => {
    const payload = Uint8Array.from({ length: 4000 }, (_, i) => (i * 7) & 0xff);
    const bytes = encodeMessage({ type: XsdSockmsgType.WRITE, reqId: 1, txId: 0, payload });
    const d = new MessageDecoder();
    const got = [];
    for (let i = 0; i < bytes.length; i++) {
      got.push(...d.push(bytes.subarray(i, i + 1)));
      if (i < bytes.length - 1) expect(d.partial).toBe(true);
    }
    expect(got).toHaveLength(1);
    expect(got[0].payload).toEqual(payload);
    expect(d.partial).toBe(false);
  });

  it('splits several messages from one push and across odd boundaries', () => {
    const a = encodeMessage({ type: 2, reqId: 1, txId: 0, payload: nulTerminated('a') });
    const b = encodeMessage({ type: 1, reqId: 2, txId: 0, payload: new Uint8Array(0) });
    const c = encodeMessage({ type: 15, reqId: 0, txId: 0, payload: nulTerminated('p', 't') });
    const all = new Uint8Array([...a, ...b, ...c]);
    for (const cut of [0, 5, 16, 17, a.length, a.length + 3, all.length - 1]) {
      const d = new MessageDecoder();
      const msgs = [...d.push(all.subarray(0, cut)), ...d.push(all.subarray(cut))];
      expect(msgs.map((m) => m.reqId)).toEqual([1, 2, 0]);
      expect(msgs[1].payload.length).toBe(0);
      expect(splitNul(msgs[2].payload)).toEqual(['p', 't']);
    }
  });

  it('accepts len = 4096 and rejects len > 4096 for good ("kills the connection")', () => {
    const ok = encodeMessage({ type: 11, reqId: 1, txId: 0, payload: new Uint8Array(4096) });
    expect(new MessageDecoder().push(ok)).toHaveLength(1);
    const bad = new Uint8Array(16);
    new DataView(bad.buffer).setUint32(12, 4097, true);
    const d = new MessageDecoder();
    expect(() => d.push(bad.subarray(0, 10))).not.toThrow();
    expect(() => d.push(bad.subarray(10))).toThrow(ProtocolError);
    expect(d.error).toBeInstanceOf(ProtocolError);
    expect(() => d.push(ok)).toThrow(ProtocolError);
  });

  it('refuses to encode a payload over 4096 bytes', () => {
    expect(() => encodeMessage({ type: 11, reqId: 1, txId: 0, payload: new Uint8Array(4097) })).toThrow();
  });
});

describe('payload helpers', () => {
  it('builds and splits NUL-separated strings', () => {
    expect(nulTerminated('path', 'token')).toEqual(enc.encode('path\0token\0'));
    expect(nulTerminated('')).toEqual(new Uint8Array([0]));
    expect(splitNul(enc.encode('a\0b\0'))).toEqual(['a', 'b']);
    expect(splitNul(enc.encode('a\0b'))).toEqual(['a', 'b']);
    expect(splitNul(enc.encode('a\0\0b\0'))).toEqual(['a', '', 'b']);
    expect(splitNul(new Uint8Array(0))).toEqual([]);
  });

  it('builds a WRITE payload without a terminating NUL and splits it back', () => {
    const p = writePayload('/a/b', new Uint8Array([1, 0, 2]));
    expect(p).toEqual(new Uint8Array([...enc.encode('/a/b'), 0, 1, 0, 2]));
    const [path, value] = splitFirstNul(p)!;
    expect(path).toBe('/a/b');
    expect(value).toEqual(new Uint8Array([1, 0, 2]));
    expect(splitFirstNul(enc.encode('no-nul'))).toBeUndefined();
  });
});
