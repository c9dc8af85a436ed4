import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PvioError } from '../rings/errors.ts';
import { ConfigError, loadConfig, MAX_VIFS, parseConfig, parseDiskSpec, parseVifSpec, type VifSpec } from '../toolstack/config.ts';

const BASE = '/srv/vm';

/** Parses `text` as `machine.cfg` in {@link BASE}. */
function parse(text: string) {
  return parseConfig(text, { file: 'machine.cfg', baseDir: BASE });
}

/** The ConfigError that parsing `text` raises. */
function fail(text: string): ConfigError {
  try {
    parse(text);
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    expect(e).toBeInstanceOf(PvioError);
    const err = e as ConfigError;
    expect(err.code).toBe('PVIO_ERR_CONFIG');
    expect(err.message).not.toContain('\n');
    return err;
  }
  throw new Error('expected a ConfigError');
}

/** Asserts that `text` fails at `line` with a message containing `fragment`. */
function failsAt(text: string, line: number, fragment: string): void {
  const err = fail(text);
  expect(err.line).toBe(line);
  expect(err.file).toBe('machine.cfg');
  expect(err.message.startsWith(`machine.cfg:${line}: `)).toBe(true);
  expect(err.message).toContain(fragment);
}

const HEAD = 'name = "g"\nkernel = "guest.ts"\n'; // two lines

describe('parseConfig: good configs', () => {
  it('reads every key, multi-line lists with comments, both disk forms', () => {
    const cfg = parse(`# A guest, xl.cfg style
name   = "guest1"        # trailing comment
memory = 128
vcpus  = 2

kernel = 'guests/disk-test.ts'
extra  = "verbose count=4 path=\\"x\\""
disk   = [ 'file:disk.img,xvda,w',   # positional with prefix
           # a comment line inside the list
           "format=raw, vdev=xvdb, access=r, target=/data/a,b.img",
           'images/c.img,xvdc,ro',
         ]
`);
    expect(cfg).toEqual({
      name: 'guest1',
      memoryMiB: 128,
      vcpus: 2,
      kernel: '/srv/vm/guests/disk-test.ts',
      extra: 'verbose count=4 path="x"',
      disks: [
        { path: '/srv/vm/disk.img', vdev: 'xvda', virtualDevice: 51712, readOnly: false },
        { path: '/data/a,b.img', vdev: 'xvdb', virtualDevice: 51728, readOnly: true },
        { path: '/srv/vm/images/c.img', vdev: 'xvdc', virtualDevice: 51744, readOnly: true },
      ],
      vifs: [],
    });
  });

  it('fills in defaults: 64 MiB, 1 vCPU, no disks, no vifs, no extra', () => {
    const cfg = parse(HEAD);
    expect(cfg).toEqual({ name: 'g', memoryMiB: 64, vcpus: 1, kernel: '/srv/vm/guest.ts', disks: [], vifs: [] });
    expect('extra' in cfg).toBe(false);
  });

  it('keeps an absolute kernel path, accepts ; separators, hex, CRLF, a BOM and empty lists', () => {
    const cfg = parse('\ufeffname="g"; kernel="/opt/k.mjs"\r\nmemory = 0x100\r\ndisk = [ ]\r\n');
    expect(cfg.kernel).toBe('/opt/k.mjs');
    expect(cfg.memoryMiB).toBe(256);
    expect(cfg.disks).toEqual([]);
  });

  it('resolves relative paths against the base directory, ".." included', () => {
    const cfg = parseConfig(`name = "g"\nkernel = "../k/guest.ts"\ndisk = ['../img/d.img,xvda']\n`,
      { baseDir: '/a/b/conf' });
    expect(cfg.kernel).toBe('/a/b/k/guest.ts');
    expect(cfg.disks[0]!.path).toBe('/a/b/img/d.img');
    expect(cfg.disks[0]!.readOnly).toBe(false); // default mode w
  });

  it('allows one image attached read-only twice', () => {
    const cfg = parse(HEAD + "disk = ['d.img,xvda,r', 'd.img,xvdb,r']\n");
    expect(cfg.disks.map((d) => d.vdev)).toEqual(['xvda', 'xvdb']);
  });
});

describe('parseConfig: bad configs give a ConfigError at the right line', () => {
  it('malformed lines', () => {
    failsAt(HEAD + 'memory 128\n', 3, "expected '=' after 'memory'");
    failsAt(HEAD + '\n= 5\n', 4, 'expected KEY = VALUE');
    failsAt(HEAD + 'extra = hello\n', 3, 'strings must be quoted');
    failsAt(HEAD + 'memory =\n', 3, "missing value for 'memory'");
    failsAt(HEAD + 'memory = 12 13\n', 3, 'unexpected number 13');
    failsAt(HEAD + 'memory = 128M\n', 3, "malformed value '128M'");
    failsAt(HEAD + 'memory = 1 @\n', 3, "unexpected character '@'");
  });

  it('unknown key, named with its line', () => {
    const err = fail(HEAD + '\n# comment\non_crash = "destroy"\n');
    expect(err.line).toBe(5);
    expect(err.message).toMatch(/^machine\.cfg:5: unknown key 'on_crash'/);
  });

  it('a key set twice', () => {
    failsAt(HEAD + 'memory = 1\nmemory = 2\n', 4, "'memory' is set twice (first at line 3)");
  });

  it('bad vdev, at the line of the list entry', () => {
    failsAt(HEAD + "disk = [ 'a.img,xvda,w',\n  'b.img,sda,w' ]\n", 4, "bad vdev 'sda'");
    failsAt(HEAD + "disk = [ 'a.img,xvdA' ]\n", 3, "bad vdev 'xvdA'");
    failsAt(HEAD + "disk = [ 'a.img,xvda1' ]\n", 3, "bad vdev 'xvda1'");
  });

  it('bad mode', () => {
    failsAt(HEAD + "disk = [\n\n  'a.img,xvda,rw',\n  'b.img,xvdb,x'\n]\n", 6, "bad mode 'x'");
    failsAt(HEAD + "disk = [ 'vdev=xvda,access=readonly,target=a.img' ]\n", 3, "bad mode 'readonly'");
  });

  it('malformed disk spec, as in the documented message', () => {
    const err = fail(HEAD + "disk = [ 'foo' ]\n");
    expect(err.message).toBe("machine.cfg:3: malformed disk spec 'foo': expected PATH,VDEV,MODE");
  });

  it('a vdev used twice, an image attached twice writable', () => {
    failsAt(HEAD + "disk = [ 'a.img,xvda', 'b.img,xvda' ]\n", 3, 'vdev xvda is used twice (also at line 3)');
    failsAt(HEAD + "disk = [ 'a.img,xvda,r',\n 'a.img,xvdb,w' ]\n", 4, 'attached twice');
  });

  it('missing name or kernel: a whole-file problem, without a line', () => {
    for (const [text, key] of [['kernel = "k.ts"\n', 'name'], ['name = "g"\nmemory = 8\n', 'kernel']] as const) {
      const err = fail(text);
      expect(err.line).toBeUndefined();
      expect(err.message).toBe(`machine.cfg: missing required key '${key}'`);
    }
  });

  it('unterminated list: at the line that opened it', () => {
    failsAt(HEAD + "disk = [ 'a.img,xvda',\n  'b.img,xvdb'\nmemory = 5\n", 3, "unterminated list for 'disk'");
    failsAt(HEAD + "\ndisk = [ 'a.img,xvda',\n", 4, "unterminated list for 'disk'");
  });

  it('other list mistakes', () => {
    failsAt(HEAD + "disk = [ 'a.img,xvda'\n  'b.img,xvdb' ]\n", 4, "expected ',' or ']'");
    failsAt(HEAD + "disk = [ [ 'a' ] ]\n", 3, 'cannot be nested');
    failsAt(HEAD + "disk = [ 5 ]\n", 3, 'disk entries must be quoted strings');
    failsAt(HEAD + "disk = [\n  xvda ]\n", 4, "'xvda' must be quoted");
    failsAt(HEAD + "disk = 'a.img,xvda,w'\n", 3, 'disk must be a list');
  });

  it('unterminated or badly escaped strings', () => {
    failsAt(HEAD + 'extra = "abc\nmemory = 3\n', 3, 'unterminated string');
    failsAt(HEAD + "extra = 'abc", 3, 'unterminated string');
    failsAt(HEAD + 'extra = "a\\qb"\n', 3, 'bad escape');
  });

  it('values of the wrong type or range', () => {
    failsAt(HEAD + 'memory = "128"\n', 3, 'memory must be an integer (MiB), got a string');
    failsAt(HEAD + 'vcpus = 0\n', 3, 'vcpus must be at least 1, got 0');
    failsAt(HEAD + 'memory = -4\n', 3, 'memory must be at least 1, got -4');
    failsAt(HEAD + 'memory = 99999999999999999999\n', 3, 'too large');
    failsAt('name = 7\nkernel = "k.ts"\n', 1, 'name must be a quoted string, got a number');
    failsAt('name = "a b"\nkernel = "k.ts"\n', 1, "bad name 'a b'");
    failsAt('name = "g"\n\nkernel = "guest.py"\n', 3, 'must be a TypeScript or JavaScript module');
    failsAt('name = "g"\nkernel = ""\n', 2, 'kernel must not be empty');
  });

  it('unsupported disk formats and types', () => {
    failsAt(HEAD + "disk = [ 'format=qcow2,vdev=xvda,target=a.q2' ]\n", 3, "unsupported format 'qcow2'");
    failsAt(HEAD + "disk = [ 'phy:/dev/sda,xvda,w' ]\n", 3, "unsupported disk type 'phy:'");
    failsAt(HEAD + "disk = [ 'vdev=xvda,color=red,target=a.img' ]\n", 3, "unknown parameter 'color'");
  });

  it('a message without a file name says <config>', () => {
    expect(() => parseConfig('frob = 1\n', { baseDir: '/' })).toThrow("<config>:1: unknown key 'frob'");
  });

  it('any text either parses or raises a one-line ConfigError (fuzz)', () => {
    const alphabet = fc.constantFrom(...'name=kernel"\'[],;#\n 0x9-memory disk xvda,w'.split(''));
    fc.assert(fc.property(fc.oneof(fc.string(), fc.string({ unit: alphabet, maxLength: 80 })), (text) => {
      try {
        parseConfig(text, { file: 'f.cfg', baseDir: '/' });
      } catch (e) {
        if (!(e instanceof ConfigError)) throw e;
        if (e.message.includes('\n')) throw new Error(`multi-line message: ${JSON.stringify(e.message)}`);
      }
    }), { numRuns: 2000 });
  });
});

describe('parseDiskSpec', () => {
  it('positional forms, with and without prefixes and mode', () => {
    expect(parseDiskSpec('file:disk.img,xvda,w', '/b')).toEqual(
      { path: '/b/disk.img', vdev: 'xvda', virtualDevice: 51712, readOnly: false });
    expect(parseDiskSpec('/abs/d.img,xvdb,r', '/b')).toEqual(
      { path: '/abs/d.img', vdev: 'xvdb', virtualDevice: 51728, readOnly: true });
    expect(parseDiskSpec(' d.img , xvdc ', '/b')).toMatchObject({ path: '/b/d.img', vdev: 'xvdc', readOnly: false });
    expect(parseDiskSpec('tap:aio:d.img,xvdd,ro', '/b')).toMatchObject({ path: '/b/d.img', readOnly: true });
    expect(parseDiskSpec('raw:d.img,xvde,rw', '/b')).toMatchObject({ path: '/b/d.img', readOnly: false });
    expect(parseDiskSpec('d.img,raw,xvdf,r', '/b')).toMatchObject({ vdev: 'xvdf', readOnly: true });
    expect(parseDiskSpec('d.img,xvdz', '/b').virtualDevice).toBe((202 << 8) | (25 << 4));
  });

  it('key=value form in any order; target takes the rest, commas included', () => {
    expect(parseDiskSpec('format=raw,vdev=xvda,access=r,target=PATH', '/b')).toEqual(
      { path: '/b/PATH', vdev: 'xvda', virtualDevice: 51712, readOnly: true });
    expect(parseDiskSpec('access=w, vdev=xvdb, devtype=disk, target=/x/a,b,c.img', '/b')).toEqual(
      { path: '/x/a,b,c.img', vdev: 'xvdb', virtualDevice: 51728, readOnly: false });
    expect(parseDiskSpec('d.img,vdev=xvdc', '/b')).toMatchObject({ path: '/b/d.img', vdev: 'xvdc' }); // mixed
  });

  it('every vdev and mode (property)', () => {
    fc.assert(fc.property(
      fc.integer({ min: 0, max: 25 }),
      fc.constantFrom('r', 'ro', 'w', 'rw'),
      fc.stringMatching(/^[a-z0-9_.\/-]{1,20}$/).filter((p) => !p.includes(':') && p !== '/'),
      fc.boolean(),
      (index, mode, path, keyed) => {
        const vdev = 'xvd' + String.fromCharCode(0x61 + index);
        const spec = keyed ? `format=raw,vdev=${vdev},access=${mode},target=${path}` : `file:${path},${vdev},${mode}`;
        const d = parseDiskSpec(spec, '/base');
        expect(d.vdev).toBe(vdev);
        expect(d.virtualDevice).toBe(51712 + 16 * index);
        expect(d.readOnly).toBe(mode.startsWith('r') && mode !== 'rw');
        expect(d.path.startsWith('/')).toBe(true);
      }));
  });

  it('errors have no file or line', () => {
    for (const [spec, fragment] of [
      ['', 'expected PATH,VDEV,MODE'],
      ['file:,xvda,w', 'empty target path'],
      ['d.img,xvda,w,extra', 'too many values'],
      ['vdev=xvda,vdev=xvdb,target=d', 'vdev given twice'],
      ['d.img,hda,w', "bad vdev 'hda'"],
      ['d.img,xvda,rwx', "bad mode 'rwx'"],
    ] as const) {
      let err: unknown;
      try { parseDiskSpec(spec, '/b'); } catch (e) { err = e; }
      expect(err, spec).toBeInstanceOf(ConfigError);
      const ce = err as ConfigError;
      expect(ce.line).toBeUndefined();
      expect(ce.file).toBeUndefined();
      expect(ce.message).toBe(ce.problem);
      expect(ce.message).toContain(fragment);
    }
  });
});

/** The ConfigError that `parseVifSpec(spec)` raises: one line, no file, no line. */
function vifFail(spec: string): ConfigError {
  let err: unknown;
  try { parseVifSpec(spec); } catch (e) { err = e; }
  expect(err, spec).toBeInstanceOf(ConfigError);
  const ce = err as ConfigError;
  expect(ce.code).toBe('PVIO_ERR_CONFIG');
  expect(ce.line).toBeUndefined();
  expect(ce.file).toBeUndefined();
  expect(ce.message).toBe(ce.problem);
  expect(ce.message).not.toContain('\n');
  expect(ce.message.startsWith(`malformed vif spec '`)).toBe(true);
  return ce;
}

/** The defaults parseVifSpec fills in. */
const VIF_DEFAULTS = { bridge: 'xenbr0', mtu: 1500, persistent: false } as const;

describe('parseVifSpec', () => {
  it('a full spec: every key, MAC lower-cased, whitespace around parts and = ignored', () => {
    const v = parseVifSpec(
      ' mac=00:16:3E:0A:Bc:ff , bridge = br-lan.2, rate=10Mb/s@20ms, mtu=9000, ip=10.0.0.2 fd00::2/64  192.168.1.9/24,'
      + 'vifname=guest1.eth0,type=vif,persistent=1,queues=4,sg=0,gso=1,csum-offload=0,split-event-channels=1');
    expect(v).toEqual({
      mac: '00:16:3e:0a:bc:ff',
      bridge: 'br-lan.2',
      rate: { bytesPerInterval: 25_000, intervalUs: 20_000 },
      mtu: 9000,
      ip: ['10.0.0.2', 'fd00::2/64', '192.168.1.9/24'],
      vifname: 'guest1.eth0',
      persistent: true,
      queues: 4,
      sg: false,
      gso: true,
      csumOffload: false,
      splitEventChannels: true,
    } satisfies VifSpec);
  });

  it("defaults: '' is a vif on xenbr0, MTU 1500, grant copy; mac, rate, queues and features left undecided", () => {
    for (const spec of ['', ' ', ',', 'type=vif', 'bridge=xenbr0,']) {
      const v = parseVifSpec(spec);
      expect(v, spec).toEqual(VIF_DEFAULTS);
      for (const k of ['mac', 'rate', 'queues', 'sg', 'gso', 'csumOffload', 'splitEventChannels', 'ip', 'vifname']) {
        expect(k in v, `${spec}: ${k}`).toBe(false);
      }
    }
    expect(parseVifSpec('mac=00:16:3e:01:02:03')).toEqual({ ...VIF_DEFAULTS, mac: '00:16:3e:01:02:03' });
  });

  it('boolean switches take 0/1 (and on/off, yes/no, as disk specs do)', () => {
    expect(parseVifSpec('persistent=0,sg=1,gso=off,csum-offload=yes,split-event-channels=no')).toEqual(
      { ...VIF_DEFAULTS, persistent: false, sg: true, gso: false, csumOffload: true, splitEventChannels: false });
  });

  it('MAC: a locally administered unicast address is fine, either case', () => {
    expect(parseVifSpec('mac=02:00:00:00:00:01').mac).toBe('02:00:00:00:00:01');
    expect(parseVifSpec('mac=AA:BB:CC:DD:EE:FF').mac).toBe('aa:bb:cc:dd:ee:ff');
  });

  it('mtu and queues bounds are inclusive', () => {
    expect(parseVifSpec('mtu=68').mtu).toBe(68);
    expect(parseVifSpec('mtu=65535').mtu).toBe(65535);
    expect(parseVifSpec('queues=1').queues).toBe(1);
    expect(parseVifSpec('queues=8').queues).toBe(8);
  });

  describe('rate: xl units (K/M/G are 1000s; bits ÷ 8), credit = bytes/s × interval ÷ 10^6', () => {
    it.each([
      // [spec, bytesPerInterval, intervalUs]
      ['10Mb/s', 62_500, 50_000], // 1 250 000 B/s × 50 ms (xl's default interval)
      ['5MB/s', 250_000, 50_000],
      ['250KB/s', 12_500, 50_000], // the man page's example
      ['1MB/s@20ms', 20_000, 20_000], // the man page's example: 20,000 bytes every 20,000 us
      ['1GB/s', 50_000_000, 50_000],
      ['1Gb/s', 6_250_000, 50_000],
      ['8Kb/s', 50, 50_000], // 1000 B/s
      ['100B/s@1s', 100, 1_000_000],
      ['20b/s@1s', 2, 1_000_000], // 2.5 B/s, rounded down as xl does (before the interval)
      ['1000000B/s@1us', 1, 1],
      ['3B/s@500ms', 1, 500_000], // 1.5 B, rounded down
      ['4294967295GB/s@1us', 4_294_967_295_000, 1], // the largest RATE: exact past 2^32
      ['1B/s@4294967295us', 4294, 4_294_967_295], // the longest interval
      ['1B/s@4294s', 4294, 4_294_000_000],
    ] as const)('%s → %i bytes per %i µs', (rate, bytesPerInterval, intervalUs) => {
      expect(parseVifSpec(`rate=${rate}`).rate).toEqual({ bytesPerInterval, intervalUs });
    });

    it('rejects malformed rates, with the rule in the message', () => {
      for (const rate of ['', '10', '10Mb', '10Mbit/s', '10mb/s', '10kB/s', '10TB/s', '1.5MB/s', '-1MB/s', '10 MB/s',
        '10MB/s@', '10MB/s@20', '10MB/s@20m', '10MB/s@20u', '10MB/s@20ns', '10MB/s@1.5s', '10MB/s@20ms@1s']) {
        expect(vifFail(`rate=${rate}`).message, rate).toBe(
          `malformed vif spec 'rate=${rate}': bad rate '${rate}': expected RATE/s[@INTERVAL], RATE with a unit B, KB, MB, GB (bytes) `
          + 'or b, Kb, Mb, Gb (bits), INTERVAL with us, ms or s, e.g. 10Mb/s or 1MB/s@20ms');
      }
    });

    it('rejects zero, leading zeros, numbers too large and credits under one byte', () => {
      expect(vifFail('rate=0MB/s').problem).toContain('the rate must be a whole number from 1, without leading zeros');
      expect(vifFail('rate=010MB/s').problem).toContain('without leading zeros');
      expect(vifFail('rate=1MB/s@0ms').problem).toContain('the interval must be a whole number from 1, without leading zeros');
      expect(vifFail('rate=4294967296B/s').problem).toBe("malformed vif spec 'rate=4294967296B/s': bad rate '4294967296B/s': the number is over 4294967295");
      expect(vifFail('rate=1B/s@4295s').problem).toContain('the interval is over 4294967295 µs');
      expect(vifFail('rate=7b/s@1s').problem).toBe(
        "malformed vif spec 'rate=7b/s@1s': bad rate '7b/s@1s': less than one byte per 1000000 µs interval; raise the rate or the interval");
      expect(vifFail('rate=19B/s').problem).toContain('less than one byte per 50000 µs interval'); // 0.95 B
      expect(vifFail('rate=4294967295GB/s@4294s').problem).toContain('over 2^53 bytes per interval');
    });
  });

  it('rejects bad values, each with its message', () => {
    for (const [spec, message] of [
      ['mac=00:16:3e:01:02', "bad mac '00:16:3e:01:02': expected six hex octets XX:XX:XX:XX:XX:XX"],
      ['mac=00-16-3e-01-02-03', "bad mac '00-16-3e-01-02-03': expected six hex octets"],
      ['mac=00:16:3e:01:02:0g', "bad mac '00:16:3e:01:02:0g'"],
      ['mac=0:16:3e:01:02:03', "bad mac '0:16:3e:01:02:03'"],
      ['mac=', "bad mac ''"],
      ['mac=01:00:5e:00:00:01', 'mac 01:00:5e:00:00:01 is a multicast address (low bit of the first octet set)'],
      ['mac=FF:FF:FF:FF:FF:FF', 'mac ff:ff:ff:ff:ff:ff is a multicast address'],
      ['mac=00:00:00:00:00:00', 'mac 00:00:00:00:00:00 is not a valid address'],
      ['bridge=', "bad bridge '': use letters, digits, '_', '.', '-' (at most 15, not starting with '_', '.' or '-')"],
      ['bridge=-br', "bad bridge '-br'"],
      ['bridge=br 0', "bad bridge 'br 0'"],
      ['bridge=abcdefghijklmnop', "bad bridge 'abcdefghijklmnop'"], // 16 characters
      ['vifname=a/b', "bad vifname 'a/b'"],
      ['mtu=67', "mtu must be an integer 68..65535, got '67'"],
      ['mtu=65536', "mtu must be an integer 68..65535, got '65536'"],
      ['mtu=1500.0', "mtu must be an integer 68..65535, got '1500.0'"],
      ['mtu=', "mtu must be an integer 68..65535, got ''"],
      ['queues=0', "queues must be an integer 1..8, got '0'"],
      ['queues=9', "queues must be an integer 1..8, got '9'"],
      ['persistent=2', "persistent must be 0 or 1, got '2'"],
      ['sg=true', "sg must be 0 or 1, got 'true'"],
      ['gso=', "gso must be 0 or 1, got ''"],
      ['csum-offload=x', "csum-offload must be 0 or 1, got 'x'"],
      ['split-event-channels=-1', "split-event-channels must be 0 or 1, got '-1'"],
      ['ip=', 'ip needs at least one address'],
      ['ip=10.0.0.256', "bad ip '10.0.0.256': expected IPv4 or IPv6 addresses, each with an optional /PREFIX, separated by spaces"],
      ['ip=10.0.0.1/33', "bad ip '10.0.0.1/33'"],
      ['ip=fd00::1/129', "bad ip 'fd00::1/129'"],
      ['ip=host.example', "bad ip 'host.example'"],
      ['type=ioemu', "unsupported type 'ioemu' (only 'vif': pvio has no emulated NICs)"],
    ] as const) {
      expect(vifFail(spec).message, spec).toContain(`malformed vif spec '${spec}': ${message}`);
    }
  });

  it('rejects a key given twice, a part without =, and unknown or unsupported keys', () => {
    expect(vifFail('bridge=a,mtu=1500,bridge=b').message).toBe("malformed vif spec 'bridge=a,mtu=1500,bridge=b': bridge given twice");
    expect(vifFail('mac=00:16:3e:00:00:01, mac=00:16:3e:00:00:01').problem).toContain('mac given twice');
    expect(vifFail('bridge').message).toBe("malformed vif spec 'bridge': expected KEY=VALUE, found 'bridge'");
    expect(vifFail('=xenbr0').problem).toContain("unknown parameter ''");
    expect(vifFail('Bridge=xenbr0').problem).toContain("unknown parameter 'Bridge'");
    expect(vifFail('color=red').message).toBe(
      "malformed vif spec 'color=red': unknown parameter 'color' (known: mac, bridge, rate, mtu, ip, vifname, type, "
      + 'persistent, queues, sg, gso, csum-offload, split-event-channels)');
    for (const [key, why] of [
      ['model', 'pvio vifs are paravirtual only (no emulated NIC)'],
      ['script', 'pvio runs no hotplug scripts; dom0 adds the vif to its bridge itself'],
      ['backend', 'backends run in dom0 only'],
      ['gatewaydev', 'pvio has bridges only (no vif-route)'],
      ['netdev', 'pvio has bridges only (no vif-route)'],
      ['devid', "a vif's DEVID is its index in the vif list"],
    ] as const) {
      expect(vifFail(`${key}=x`).message).toBe(`malformed vif spec '${key}=x': unsupported parameter '${key}': ${why}`);
    }
  });

  it('any text either parses or raises a one-line ConfigError (fuzz)', () => {
    const alphabet = fc.constantFrom(...'mac=bridge,rate@/sMbBKG0123456789:ef mtu queues ip=. ,=\n'.split(''));
    fc.assert(fc.property(fc.oneof(fc.string(), fc.string({ unit: alphabet, maxLength: 60 })), (spec) => {
      try {
        const v = parseVifSpec(spec);
        if (v.rate && !(Number.isSafeInteger(v.rate.bytesPerInterval) && v.rate.bytesPerInterval >= 1)) {
          throw new Error(`bad credit for ${JSON.stringify(spec)}`);
        }
      } catch (e) {
        if (!(e instanceof ConfigError)) throw e;
        if (e.message.includes('\n')) throw new Error(`multi-line message: ${JSON.stringify(e.message)}`);
      }
    }), { numRuns: 2000 });
  });
});

describe('parseConfig: vif', () => {
  it('reads a vif list spanning lines, in order', () => {
    const cfg = parse(HEAD + `vif = [ 'mac=00:16:3E:01:02:03,bridge=xenbr0',
        'bridge=xenbr1, rate=5MB/s',   # comment
        '',
      ]
`);
    expect(cfg.vifs).toEqual([
      { ...VIF_DEFAULTS, mac: '00:16:3e:01:02:03' },
      { ...VIF_DEFAULTS, bridge: 'xenbr1', rate: { bytesPerInterval: 250_000, intervalUs: 50_000 } },
      VIF_DEFAULTS,
    ]);
    expect(cfg.disks).toEqual([]);
  });

  it(`takes ${MAX_VIFS} vifs, and vifs without a MAC any number of times`, () => {
    const specs = Array.from({ length: MAX_VIFS }, (_, i) => (i % 2 ? `'mac=00:16:3e:00:00:0${i}'` : "'bridge=xenbr0'"));
    expect(parse(HEAD + `vif = [ ${specs.join(', ')} ]\n`).vifs).toHaveLength(MAX_VIFS);
  });

  it('a bad vif spec: the message of parseVifSpec, at the line of the entry', () => {
    const err = fail(HEAD + "vif = [ 'bridge=xenbr0',\n  'mtu=9' ]\n");
    expect(err.message).toBe("machine.cfg:4: malformed vif spec 'mtu=9': mtu must be an integer 68..65535, got '9'");
    failsAt(HEAD + "vif = [ 'model=e1000' ]\n", 3, "unsupported parameter 'model'");
    failsAt(HEAD + "\nvif = [ 'bridge=xenbr0,frob=1' ]\n", 4, "unknown parameter 'frob'");
  });

  it('a MAC used twice, in any case, is refused at its second entry', () => {
    failsAt(HEAD + "vif = [ 'mac=00:16:3e:00:00:01',\n\n  'bridge=b,mac=00:16:3E:00:00:01' ]\n", 5,
      'mac 00:16:3e:00:00:01 is used twice (also at line 3)');
  });

  it(`more than ${MAX_VIFS} vifs are refused at the first one too many`, () => {
    const lines = Array.from({ length: MAX_VIFS + 1 }, () => "  'bridge=xenbr0',").join('\n');
    failsAt(HEAD + `vif = [\n${lines}\n]\n`, 3 + MAX_VIFS + 1, `too many vifs: at most ${MAX_VIFS} per guest`);
  });

  it('vif must be a list of strings, and set once', () => {
    failsAt(HEAD + "vif = 'bridge=xenbr0'\n", 3, "vif must be a list of vif specs, e.g. [ 'bridge=xenbr0' ], got a string");
    failsAt(HEAD + 'vif = [ 1 ]\n', 3, 'vif entries must be quoted strings, got number 1');
    failsAt(HEAD + "vif = []\nvif = ['']\n", 4, "'vif' is set twice (first at line 3)");
  });
});

describe('loadConfig', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'pvio-config-'));
    mkdirSync(join(dir, 'vm'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("resolves paths against the config file's directory, without checking they exist", () => {
    const file = join(dir, 'vm', 'machine.cfg');
    writeFileSync(file, "name = 'g'\nkernel = 'guest.ts'\ndisk = [ 'disk.img,xvda,w' ]\n");
    const cfg = loadConfig(file);
    expect(cfg.kernel).toBe(join(dir, 'vm', 'guest.ts'));
    expect(cfg.disks[0]!.path).toBe(join(dir, 'vm', 'disk.img'));
  });

  it('names the file as given in its errors', () => {
    const file = join(dir, 'vm', 'bad.cfg');
    writeFileSync(file, "name = 'g'\nkernel = 'guest.ts'\nfrob = 1\n");
    expect(() => loadConfig(file)).toThrow(`${file}:3: unknown key 'frob'`);
  });

  it('a missing file, a directory or a huge file is a ConfigError without a line', () => {
    const missing = join(dir, 'nope.cfg');
    expect(() => loadConfig(missing)).toThrow(`${missing}: cannot read config file: no such file`);
    expect(() => loadConfig(dir)).toThrow(ConfigError);
    const big = join(dir, 'big.cfg');
    writeFileSync(big, Buffer.alloc((1 << 20) + 1, 0x23)); // '#' * (1 MiB + 1)
    expect(() => loadConfig(big)).toThrow('too large');
  });
});
