import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PvioError } from '../rings/errors.ts';
import { ConfigError, loadConfig, parseConfig, parseDiskSpec } from '../toolstack/config.ts';

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
    });
  });

  it('fills in defaults: 64 MiB, 1 vCPU, no disks, no extra', () => {
    const cfg = parse(HEAD);
    expect(cfg).toEqual({ name: 'g', memoryMiB: 64, vcpus: 1, kernel: '/srv/vm/guest.ts', disks: [] });
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
