/**
 * Machine configuration in the syntax of Xen's `xl.cfg` (the subset pvio needs).
 *
 * One file describes ONE guest domain, as an `xl.cfg` does:
 *
 * ```
 * # guest.cfg
 * name   = "guest1"
 * memory = 128                 # MiB
 * vcpus  = 2
 * kernel = "guests/disk-test.ts"
 * extra  = "verbose count=4"
 * disk   = [ 'file:disk.img,xvda,w',
 *            'format=raw, vdev=xvdb, access=r, target=/data/ro.img' ]
 * ```
 *
 * Syntax: statements `KEY = VALUE`, one per line (or separated by `;`); `#` starts
 * a comment that runs to the end of the line; blank lines are ignored. A VALUE is a
 * string (`"..."`, with C escapes `\\ \" \' \n \t \r \xHH`, or `'...'`, taken
 * literally), an integer (decimal or `0x` hex), or a list `[ v, v, ... ]` of strings
 * and integers, which may span several lines and may end with a comma. Lists do not
 * nest. A key may be set only once.
 *
 * Keys (anything else is an error naming the key and its line):
 * - `name`   string, required: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 64 characters;
 * - `memory` integer MiB ≥ 1, default 64;
 * - `vcpus`  integer ≥ 1, default 1;
 * - `kernel` string, required: the guest program, a TypeScript/JavaScript module
 *            (`.ts .mts .cts .js .mjs .cjs`), resolved against the config file's
 *            directory;
 * - `extra`  string, optional: the guest's command line;
 * - `disk`   list of disk specs (see {@link parseDiskSpec}), default none;
 * - `vif`    list of at most 8 vif specs (see {@link parseVifSpec}), e.g.
 *            `vif = [ 'mac=00:16:3e:01:02:03,bridge=xenbr0', 'rate=10Mb/s' ]`, default
 *            none; no MAC may appear twice.
 *
 * Nothing here touches the file system except {@link loadConfig} reading the config
 * itself: whether the kernel and disk images exist is for the toolstack to check.
 */
import { closeSync, fstatSync, openSync, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { dirname, isAbsolute, resolve } from 'node:path';
import { PvioError } from '../rings/errors.ts';
import { MAX_INDIRECT_SEGMENTS_CEILING, MAX_QUEUES, MAX_RING_PAGE_ORDER, type BlkbackFeatures } from '../blkback/features.ts';
import type { StoreSpec } from '../blkback/storage.ts';

/** One virtual disk of a guest, from one entry of the config's `disk` list. */
export interface DiskSpec {
  /** Absolute path of the raw image file backing the disk. */
  path: string;
  /** Guest device name, `xvda` … `xvdz`. */
  vdev: string;
  /**
   * Linux's virtual-device number for {@link vdev} (the XenStore `virtual-device`
   * key): `(202 << 8) | (index << 4)`, so xvda = 51712, xvdb = 51728.
   */
  virtualDevice: number;
  /** True for access `r`/`ro`; false for `w`/`rw` (the default). */
  readOnly: boolean;
  /**
   * blkif features switched from their defaults (`DEFAULT_BLKBACK_FEATURES`) by the
   * spec's feature keys; absent when the spec sets none.
   */
  features?: Partial<BlkbackFeatures>;
  /** The store and its wrappers, when the spec names any (`store=`...); absent means a raw file. */
  store?: StoreSpec;
}

/** One guest domain, as described by one config file. */
export interface DomainConfig {
  /** Domain name (`name`). */
  name: string;
  /** Memory size in MiB (`memory`, default 64). */
  memoryMiB: number;
  /** Number of vCPUs, each a worker thread (`vcpus`, default 1). */
  vcpus: number;
  /** Absolute path of the guest module (`kernel`). */
  kernel: string;
  /** The guest's command line (`extra`), absent when not set. */
  extra?: string;
  /** Virtual disks in config order (`disk`); empty when not set. */
  disks: DiskSpec[];
  /** Virtual network interfaces in config order (`vif`), index = DEVID; empty when not set. */
  vifs: VifSpec[];
}

/**
 * A config file could not be read or is invalid. `message` is one line,
 * `FILE:LINE: PROBLEM` (e.g. `machine.cfg:3: malformed disk spec 'foo': expected
 * PATH,VDEV,MODE`); `:LINE` is left out for problems of the whole file (a missing
 * required key, an unreadable file), and `FILE:` too when neither is known (a spec
 * given straight to {@link parseDiskSpec}). Code `PVIO_ERR_CONFIG`.
 */
export class ConfigError extends PvioError {
  /** The file named in the message, when known. */
  readonly file: string | undefined;
  /** 1-based line number, when the problem is on one line. */
  readonly line: number | undefined;
  /** The problem alone, without the `FILE:LINE:` prefix. */
  readonly problem: string;
  constructor(problem: string, where: { file?: string; line?: number } = {}, options?: { cause?: unknown }) {
    const prefix = where.file === undefined && where.line === undefined
      ? ''
      : `${where.file ?? '<config>'}${where.line !== undefined ? `:${where.line}` : ''}: `;
    super('PVIO_ERR_CONFIG', prefix + problem, options);
    this.file = where.file;
    this.line = where.line;
    this.problem = problem;
  }
}

/** Largest config file {@link loadConfig} reads: a config is a few hundred bytes. */
const MAX_CONFIG_BYTES = 1 << 20;

const KNOWN_KEYS = ['name', 'memory', 'vcpus', 'kernel', 'extra', 'disk', 'vif'] as const;
type Key = (typeof KNOWN_KEYS)[number];

const KERNEL_EXTENSIONS = ['.ts', '.mts', '.cts', '.js', '.mjs', '.cjs'];

/** Linux's major number for Xen virtual disks (`XEN_XVD_MAJOR`). */
const XVD_MAJOR = 202;

/** Quotes a user-supplied string for a one-line message, escaping what is not printable. */
function q(s: string): string {
  const max = 200;
  const cut = s.length > max ? s.slice(0, max) + '...' : s;
  return `'${cut.replace(/[\\']/g, (c) => '\\' + c).replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g,
    (c) => '\\x' + c.charCodeAt(0).toString(16).padStart(2, '0'))}'`;
}

// ---------------------------------------------------------------------------
// Lexer

type Token =
  | { kind: 'ident'; text: string; line: number }
  | { kind: 'string'; value: string; line: number }
  | { kind: 'int'; value: number; text: string; line: number }
  | { kind: 'punct'; text: '=' | '[' | ']' | ',' | ';'; line: number }
  | { kind: 'newline'; line: number }
  | { kind: 'eof'; line: number };

/** Raised by the lexer and parser with a line number; becomes a ConfigError. */
class LocatedProblem {
  constructor(readonly problem: string, readonly line: number | undefined) {}
}

function isPunct(t: Token, text: string): boolean {
  return t.kind === 'punct' && t.text === text;
}

function describe(t: Token): string {
  switch (t.kind) {
    case 'ident': return q(t.text);
    case 'string': return `string ${q(t.value)}`;
    case 'int': return `number ${t.text}`;
    case 'punct': return `'${t.text}'`;
    case 'newline': return 'end of line';
    case 'eof': return 'end of file';
  }
}

function tokenize(text: string): Token[] {
  const out: Token[] = [];
  let i = 0;
  let line = 1;
  if (text.charCodeAt(0) === 0xfeff) i = 1; // byte-order mark
  const n = text.length;
  while (i < n) {
    const c = text[i]!;
    if (c === '\n') {
      out.push({ kind: 'newline', line });
      line++;
      i++;
    } else if (c === ' ' || c === '\t' || c === '\r' || c === '\f' || c === '\v') {
      i++;
    } else if (c === '#') {
      while (i < n && text[i] !== '\n') i++;
    } else if (c === '=' || c === '[' || c === ']' || c === ',' || c === ';') {
      out.push({ kind: 'punct', text: c, line });
      i++;
    } else if (c === '"' || c === "'") {
      const start = line;
      let value = '';
      i++;
      for (;;) {
        if (i >= n || text[i] === '\n') throw new LocatedProblem('unterminated string', start);
        const d = text[i]!;
        if (d === c) { i++; break; }
        if (d === '\\' && c === '"') {
          const e = text[i + 1];
          const simple: Record<string, string> = { '\\': '\\', '"': '"', "'": "'", n: '\n', t: '\t', r: '\r' };
          if (e !== undefined && e in simple) {
            value += simple[e];
            i += 2;
          } else if (e === 'x' && /^[0-9a-fA-F]{2}$/.test(text.slice(i + 2, i + 4))) {
            value += String.fromCharCode(parseInt(text.slice(i + 2, i + 4), 16));
            i += 4;
          } else {
            throw new LocatedProblem(`bad escape ${q('\\' + (e ?? ''))} in string`, line);
          }
        } else {
          value += d;
          i++;
        }
      }
      out.push({ kind: 'string', value, line });
    } else if (/[0-9-]/.test(c)) {
      const m = /^-?(?:0[xX][0-9a-fA-F]+|[0-9]+)(?![A-Za-z0-9_.])/.exec(text.slice(i, i + 64));
      if (!m) {
        const word = /^[^\s,\]\[;#=]*/.exec(text.slice(i))![0];
        throw new LocatedProblem(`malformed value ${q(word)}: expected a number, a quoted string or a list`, line);
      }
      const t = m[0];
      const neg = t.startsWith('-');
      const body = neg ? t.slice(1) : t;
      const mag = /^0[xX]/.test(body) ? parseInt(body.slice(2), 16) : parseInt(body, 10);
      const value = neg ? -mag : mag;
      if (!Number.isSafeInteger(value)) throw new LocatedProblem(`number ${t} is too large`, line);
      out.push({ kind: 'int', value, text: t, line });
      i += t.length;
    } else if (/[A-Za-z_]/.test(c)) {
      const m = /^[A-Za-z_][A-Za-z0-9_.]*/.exec(text.slice(i, i + 256))!;
      out.push({ kind: 'ident', text: m[0], line });
      i += m[0].length;
    } else {
      throw new LocatedProblem(`unexpected character ${q(c)}`, line);
    }
  }
  out.push({ kind: 'eof', line });
  return out;
}

// ---------------------------------------------------------------------------
// Parser

type Scalar = { kind: 'string'; value: string; line: number } | { kind: 'int'; value: number; text: string; line: number };
type Value = Scalar | { kind: 'list'; items: Scalar[]; line: number };
interface Setting { key: Key; keyLine: number; value: Value }

function parseSettings(tokens: Token[]): Map<Key, Setting> {
  const settings = new Map<Key, Setting>();
  let p = 0;
  const peek = (): Token => tokens[p]!;
  const next = (): Token => tokens[p++]!;

  for (;;) {
    const t = next();
    if (t.kind === 'eof') break;
    if (t.kind === 'newline' || (t.kind === 'punct' && t.text === ';')) continue;
    if (t.kind !== 'ident') {
      throw new LocatedProblem(`malformed line: expected KEY = VALUE, found ${describe(t)}`, t.line);
    }
    const key = t.text;
    const eq = next();
    if (!(eq.kind === 'punct' && eq.text === '=')) {
      throw new LocatedProblem(`malformed line: expected '=' after ${q(key)}, found ${describe(eq)}`, eq.line);
    }
    if (!(KNOWN_KEYS as readonly string[]).includes(key)) {
      throw new LocatedProblem(`unknown key ${q(key)} (known keys: ${KNOWN_KEYS.join(', ')})`, t.line);
    }
    const value = parseValue(key);
    const end = next();
    if (!(end.kind === 'newline' || end.kind === 'eof' || (end.kind === 'punct' && end.text === ';'))) {
      throw new LocatedProblem(`malformed line: unexpected ${describe(end)} after the value of ${q(key)}`, end.line);
    }
    if (end.kind === 'eof') p--;
    const prev = settings.get(key as Key);
    if (prev) throw new LocatedProblem(`${q(key)} is set twice (first at line ${prev.keyLine})`, t.line);
    settings.set(key as Key, { key: key as Key, keyLine: t.line, value });
  }
  return settings;

  function parseValue(key: string): Value {
    const t = next();
    if (t.kind === 'string' || t.kind === 'int') return t;
    if (t.kind === 'punct' && t.text === '[') return parseList(key, t.line);
    if (t.kind === 'newline' || t.kind === 'eof' || (t.kind === 'punct' && t.text === ';')) {
      throw new LocatedProblem(`missing value for ${q(key)}`, t.line);
    }
    if (t.kind === 'ident') {
      throw new LocatedProblem(`malformed value ${q(t.text)} for ${q(key)}: strings must be quoted`, t.line);
    }
    throw new LocatedProblem(`malformed value for ${q(key)}: unexpected ${describe(t)}`, t.line);
  }

  function parseList(key: string, openLine: number): Value {
    const items: Scalar[] = [];
    const skipNewlines = (): void => { while (peek().kind === 'newline') p++; };
    const unterminated = (): LocatedProblem =>
      new LocatedProblem(`unterminated list for ${q(key)}: '[' is never closed by ']'`, openLine);
    for (;;) {
      skipNewlines();
      let t = next();
      if (t.kind === 'punct' && t.text === ']') break;
      if (t.kind === 'string' || t.kind === 'int') {
        items.push(t);
      } else if (t.kind === 'eof' || (t.kind === 'ident' && isPunct(peek(), '='))) {
        // The end of the file, or the next `key = ...` statement: the list was left open.
        throw unterminated();
      } else if (t.kind === 'ident') {
        throw new LocatedProblem(`malformed list for ${q(key)}: ${q(t.text)} must be quoted`, t.line);
      } else if (t.kind === 'punct' && t.text === '[') {
        throw new LocatedProblem(`lists cannot be nested (in ${q(key)})`, t.line);
      } else {
        throw new LocatedProblem(`malformed list for ${q(key)}: unexpected ${describe(t)}`, t.line);
      }
      skipNewlines();
      t = next();
      if (t.kind === 'punct' && t.text === ']') break;
      if (t.kind === 'punct' && t.text === ',') continue;
      if (t.kind === 'eof' || (t.kind === 'ident' && isPunct(peek(), '='))) throw unterminated();
      throw new LocatedProblem(`malformed list for ${q(key)}: expected ',' or ']', found ${describe(t)}`, t.line);
    }
    return { kind: 'list', items, line: openLine };
  }
}

// ---------------------------------------------------------------------------
// Typed values

function valueKind(v: Value): string {
  return v.kind === 'list' ? 'a list' : v.kind === 'int' ? 'a number' : 'a string';
}

function wantString(s: Setting): { value: string; line: number } {
  if (s.value.kind !== 'string') {
    throw new LocatedProblem(`${s.key} must be a quoted string, got ${valueKind(s.value)}`, s.value.line);
  }
  return s.value;
}

function wantInt(s: Setting, what: string, min: number): number {
  if (s.value.kind !== 'int') {
    throw new LocatedProblem(`${s.key} must be an integer (${what}), got ${valueKind(s.value)}`, s.value.line);
  }
  if (s.value.value < min) {
    throw new LocatedProblem(`${s.key} must be at least ${min}, got ${s.value.text}`, s.value.line);
  }
  return s.value.value;
}

/**
 * Parses one disk spec, in either of xl's disk-configuration forms (see
 * `xl-disk-configuration(5)`):
 * - positional: `'[file:]PATH,VDEV[,MODE]'` (`raw:`, `aio:` and `tap:aio:` are
 *   accepted as synonyms of `file:`), or `'PATH,raw,VDEV,MODE'` with the format;
 * - key=value: `'format=raw,vdev=xvda,access=r,target=PATH'`, in any order, mixable
 *   with positional values; `target=` must come last since a path may contain commas.
 *
 * Whitespace around each comma-separated part is ignored. VDEV is `xvda` … `xvdz`;
 * MODE (`access`) is `r`/`ro` (read-only) or `w`/`rw` (the default); the only format
 * is `raw`. A relative PATH is resolved against `baseDir`; whether it exists is not
 * checked.
 *
 * pvio's own keys (before `target=`), each optional:
 * - blkif features (defaults in `blkback/features.ts`: all on): `discard` /
 *   `no-discard` (xl's keywords) or `discard=0|1`, `persistent=0|1`, `barrier=0|1`,
 *   `flush=0|1`, `max-indirect-segments=0..4096` (0 = off, default 256),
 *   `max-ring-page-order=0..4` (default 4), `max-queues=1..16` (default 4),
 *   `sector-size=512|4096`;
 * - the store: `store=raw|cow|module` (default raw), `base=PATH` (cow: the read-only
 *   base image; the target is the overlay), `module=PATH` (a user's store module),
 *   `direct=1` (raw: O_DIRECT through an aligned bounce pool),
 *   and wrappers `latency-us=N` (µs), `error-rate=0..1` with `error-seed=N`,
 *   `trace=PATH` (JSON lines).
 *
 * @param spec one entry of the `disk` list
 * @param baseDir directory that relative paths are resolved against (normally the
 *   config file's directory)
 * @returns the disk with an absolute `path` and its Linux `virtualDevice` number
 * @throws ConfigError (with no file or line; {@link parseConfig} adds them) naming
 *   the problem, e.g. `malformed disk spec 'foo': expected PATH,VDEV,MODE`
 */
export function parseDiskSpec(spec: string, baseDir: string): DiskSpec {
  try {
    return parseDiskSpecOrThrow(spec, baseDir);
  } catch (e) {
    if (e instanceof LocatedProblem) throw new ConfigError(e.problem);
    throw e;
  }
}

function parseDiskSpecOrThrow(spec: string, baseDir: string): DiskSpec {
  const bad = (why: string): LocatedProblem => new LocatedProblem(`malformed disk spec ${q(spec)}: ${why}`, undefined);
  const shape = 'expected PATH,VDEV,MODE';

  // Split into parts; `target=` swallows the rest of the spec, commas included.
  const parts: string[] = [];
  let rest = spec;
  for (;;) {
    const lead = rest.replace(/^\s+/, '');
    if (/^target\s*=/.test(lead)) { parts.push(lead); break; }
    const comma = rest.indexOf(',');
    if (comma < 0) { parts.push(rest); break; }
    parts.push(rest.slice(0, comma));
    rest = rest.slice(comma + 1);
  }

  const keyed: { target?: string; format?: string; vdev?: string; access?: string } = {};
  const features: Partial<BlkbackFeatures> = {};
  const store: Partial<StoreSpec> = {};
  const seenExtra = new Set<string>();
  const positional: string[] = [];
  for (const raw of parts) {
    const part = raw.trim();
    if (part === 'discard' || part === 'no-discard') {
      features.discard = part === 'discard';
      continue;
    }
    const x = /^([a-z][a-z0-9-]*)\s*=\s*(.*)$/.exec(part);
    if (x && EXTRA_KEYS.has(x[1]!)) {
      if (seenExtra.has(x[1]!)) throw bad(`${x[1]} given twice`);
      seenExtra.add(x[1]!);
      applyExtraKey(x[1]!, x[2]!.trim(), features, store, baseDir, bad);
      continue;
    }
    const m = /^(target|format|vdev|access|devtype)\s*=\s*([\s\S]*)$/.exec(part);
    if (m) {
      const k = m[1] as 'target' | 'format' | 'vdev' | 'access' | 'devtype';
      const v = k === 'target' ? m[2]! : m[2]!.trim();
      if (k === 'devtype') {
        if (v !== 'disk') throw bad(`unsupported devtype ${q(v)} (only 'disk')`);
        continue;
      }
      if (keyed[k] !== undefined) throw bad(`${k} given twice`);
      keyed[k] = v;
    } else if (/^[A-Za-z_-]+\s*=/.test(part)) {
      throw bad(`unknown parameter ${q(part.slice(0, part.indexOf('=')).trim())} (known: target, format, vdev, access, devtype, ${[...EXTRA_KEYS].join(', ')})`);
    } else {
      positional.push(part);
    }
  }

  // Positional values fill target, [format,] vdev, access in that order, skipping
  // what was given by key. A positional that names a format is the format.
  const FORMATS = ['raw', 'qcow', 'qcow2', 'vhd', 'qed'];
  let target = keyed.target;
  let format = keyed.format;
  let vdev = keyed.vdev;
  let access = keyed.access;
  for (const v of positional) {
    if (target === undefined) target = v;
    else if (format === undefined && vdev === undefined && FORMATS.includes(v)) format = v;
    else if (vdev === undefined) vdev = v;
    else if (access === undefined) access = v;
    else throw bad(`too many values; ${shape}`);
  }
  if (target === undefined || vdev === undefined) throw bad(shape);

  // Legacy `PREFIX:` on the target.
  const prefix = /^(?:(?:tap2?:)?aio|file|raw):/.exec(target);
  if (prefix) {
    target = target.slice(prefix[0].length);
  } else {
    const other = /^((?:tap2?:)?(?:phy|qcow2?|vhd|qed|iscsi|nbd|rbd|drbd)):/.exec(target);
    if (other) throw bad(`unsupported disk type '${other[1]}:' (pvio serves raw image files only)`);
  }
  if (format !== undefined && format !== 'raw') throw bad(`unsupported format ${q(format)} (only 'raw')`);
  if (target === '') throw bad(`empty target path; ${shape}`);
  if (target.includes('\0')) throw bad('target path contains a NUL character');

  const vm = /^xvd([a-z])$/.exec(vdev);
  if (!vm) throw bad(`bad vdev ${q(vdev)}: expected xvda ... xvdz`);
  const index = vm[1]!.charCodeAt(0) - 0x61;

  let readOnly: boolean;
  const mode = access === undefined ? 'w' : access;
  if (mode === 'r' || mode === 'ro') readOnly = true;
  else if (mode === 'w' || mode === 'rw') readOnly = false;
  else throw bad(`bad mode ${q(mode)}: expected r, ro, w or rw`);

  if (store.type === 'cow' && store.base === undefined) throw bad('store=cow needs base=PATH (the read-only base image)');
  if (store.type === 'module' && store.module === undefined) throw bad('store=module needs module=PATH');
  if (store.base !== undefined && store.type !== 'cow') throw bad('base= is only for store=cow');
  if (store.module !== undefined && store.type !== 'module') throw bad('module= is only for store=module');
  const out: DiskSpec = {
    path: resolve(baseDir, target),
    vdev,
    virtualDevice: (XVD_MAJOR << 8) | (index << 4),
    readOnly,
  };
  if (Object.keys(features).length > 0) out.features = features;
  if (Object.keys(store).length > 0) out.store = { type: 'raw', ...store };
  return out;
}

/**
 * pvio's disk spec keys beyond xl's (xl's `discard` / `no-discard` keywords are
 * taken too). Feature keys switch what blkback advertises; store keys pick the
 * storage backend and wrap it. They must come before `target=`.
 */
const EXTRA_KEYS = new Set([
  'max-indirect-segments', 'persistent', 'max-ring-page-order', 'max-queues', 'barrier', 'flush',
  'discard', 'sector-size',
  'store', 'base', 'module', 'direct', 'latency-us', 'error-rate', 'error-seed', 'trace',
]);

/** Applies one of {@link EXTRA_KEYS}; throws `bad(...)` for a value out of range. */
function applyExtraKey(
  key: string, v: string, features: Partial<BlkbackFeatures>, store: Partial<StoreSpec>, baseDir: string,
  bad: (why: string) => LocatedProblem,
): void {
  const int = (min: number, max: number): number => {
    if (!/^\d+$/.test(v) || Number(v) < min || Number(v) > max) throw bad(`${key} must be an integer ${min}..${max}, got ${q(v)}`);
    return Number(v);
  };
  const bool = (): boolean => {
    if (v === '1' || v === 'on' || v === 'yes') return true;
    if (v === '0' || v === 'off' || v === 'no') return false;
    throw bad(`${key} must be 0 or 1, got ${q(v)}`);
  };
  const path = (): string => {
    if (v === '' || v.includes('\0')) throw bad(`${key} needs a path`);
    return resolve(baseDir, v);
  };
  switch (key) {
    case 'max-indirect-segments': features.maxIndirectSegments = int(0, MAX_INDIRECT_SEGMENTS_CEILING); break;
    case 'persistent': features.persistent = bool(); break;
    case 'max-ring-page-order': features.maxRingPageOrder = int(0, MAX_RING_PAGE_ORDER); break;
    case 'max-queues': features.maxQueues = int(1, MAX_QUEUES); break;
    case 'barrier': features.barrier = bool(); break;
    case 'flush': features.flush = bool(); break;
    case 'discard': features.discard = bool(); break;
    case 'sector-size': {
      if (v !== '512' && v !== '4096') throw bad(`sector-size must be 512 or 4096, got ${q(v)}`);
      features.sectorSize = Number(v) as 512 | 4096;
      break;
    }
    case 'store': {
      if (v !== 'raw' && v !== 'cow' && v !== 'module') throw bad(`store must be raw, cow or module, got ${q(v)}`);
      store.type = v;
      break;
    }
    case 'base': store.base = path(); break;
    case 'module': store.module = path(); break;
    case 'direct': store.direct = bool(); break;
    case 'latency-us': store.latencyUs = int(0, 10_000_000); break;
    case 'error-rate': {
      const r = Number(v);
      if (!/^\d*\.?\d+$/.test(v) || !(r >= 0 && r <= 1)) throw bad(`error-rate must be a fraction 0..1, got ${q(v)}`);
      store.errorRate = r;
      break;
    }
    case 'error-seed': store.errorSeed = int(0, 2 ** 31 - 1); break;
    case 'trace': store.trace = path(); break;
  }
}

// ---------------------------------------------------------------------------
// Vifs

/**
 * xl's vif rate limit, as libxl hands it to netback (the XenStore `rate` key,
 * `BYTES,USEC`; Linux netback's `credit_bytes` / `credit_usec`): every
 * `intervalUs` the vif's transmit credit is refilled to `bytesPerInterval`.
 *
 * @see docs/man/xl-network-configuration.5.pod (`rate`)
 * @see tools/libs/util/libxlu_vif.c `xlu_vif_parse_rate()`
 */
export interface VifRate {
  /** Credit per interval, in bytes: an integer ≥ 1 (xl's `rate_bytes_per_interval`). */
  bytesPerInterval: number;
  /** Refill interval, in µs: an integer 1 … 2^32 − 1 (xl's `rate_interval_usecs`; default 50000). */
  intervalUs: number;
}

/**
 * One virtual network interface of a guest, from one entry of the config's `vif`
 * list; its DEVID is its index in that list. {@link parseVifSpec} always sets
 * `bridge`, `mtu` and `persistent` (to their defaults when the spec does not);
 * they are optional here so that a program may also build a spec by hand (e.g.
 * `{ persistent: true }`) and leave them to the toolstack. The other fields are
 * absent unless the spec sets them: the toolstack or the frontend/backend
 * negotiation decides.
 *
 * @see docs/man/xl-network-configuration.5.pod
 */
export interface VifSpec {
  /**
   * The guest's MAC address, lower-case `xx:xx:xx:xx:xx:xx`: unicast and not all
   * zeros. Absent when not given: the toolstack then generates one in Xen's OUI
   * `00:16:3e`, as xl does.
   */
  mac?: string;
  /** dom0 bridge the vif joins (`bridge`, default {@link DEFAULT_VIF_BRIDGE}); at most 15 characters. */
  bridge?: string;
  /**
   * MTU in bytes, the largest IP packet without the Ethernet header (`mtu`,
   * 68 … 65535, default {@link DEFAULT_VIF_MTU}).
   */
  mtu?: number;
  /** Transmit rate limit (`rate`); absent = unlimited, as in xl. */
  rate?: VifRate;
  /** Backend interface name (`vifname`); absent = `vif<DOMID>.<DEVID>`. */
  vifname?: string;
  /** Addresses from `ip=` (split on spaces), each IPv4 or IPv6 with an optional `/PREFIX`; absent when not given. */
  ip?: string[];
  /**
   * pvio extension `persistent=0|1`: false (default) = grant copy, Linux netback's
   * way; true = pvio's pool of persistently granted buffers.
   */
  persistent?: boolean;
  /**
   * pvio extension `queues=1..8`: the most queues (`multi-queue-num-queues`) to
   * use; absent = the smaller of the guest's vCPUs and the backend's maximum,
   * decided when the vif is connected.
   */
  queues?: number;
  /** pvio extension `sg=0|1`: offer scatter-gather (`feature-sg`); absent = on where both ends support it. */
  sg?: boolean;
  /** pvio extension `gso=0|1`: offer TCP segmentation offload (`feature-gso-tcpv4`/`-tcpv6`); absent = on where supported. */
  gso?: boolean;
  /** pvio extension `csum-offload=0|1`: checksum offload (false: `feature-no-csum-offload`); absent = on where supported. */
  csumOffload?: boolean;
  /** pvio extension `split-event-channels=0|1`: separate tx/rx event channels (`feature-split-event-channels`); absent = on where supported. */
  splitEventChannels?: boolean;
}

/** xl's default `bridge`. */
export const DEFAULT_VIF_BRIDGE = 'xenbr0';
/** xl's default `mtu`, in bytes. */
export const DEFAULT_VIF_MTU = 1500;
/** Most vifs per guest. */
export const MAX_VIFS = 8;
/** Most queues a vif spec may ask for (`queues=`), netback's `multi-queue-max-queues`. */
export const MAX_VIF_QUEUES = 8;

/** xl's replenishment interval when `rate=` gives none: 50 ms. */
const DEFAULT_RATE_INTERVAL_US = 50_000;
const UINT32_MAX = 0xffff_ffff;

/** The vif spec keys pvio takes, xl's first, then pvio's extensions. */
const VIF_KEYS = [
  'mac', 'bridge', 'rate', 'mtu', 'ip', 'vifname', 'type',
  'persistent', 'queues', 'sg', 'gso', 'csum-offload', 'split-event-channels',
] as const;
type VifKey = (typeof VIF_KEYS)[number];

/** xl's vif keys that pvio recognises but cannot honour, with why. */
const UNSUPPORTED_VIF_KEYS: Record<string, string> = {
  model: 'pvio vifs are paravirtual only (no emulated NIC)',
  script: 'pvio runs no hotplug scripts; dom0 adds the vif to its bridge itself',
  backend: 'backends run in dom0 only',
  gatewaydev: 'pvio has bridges only (no vif-route)',
  netdev: 'pvio has bridges only (no vif-route)',
  devid: "a vif's DEVID is its index in the vif list",
};

/** Linux interface names (IFNAMSIZ 16, so 15 characters), for `bridge` and `vifname`. */
const IFNAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/;

/**
 * Parses one vif spec, in xl's form: comma-separated `KEY=VALUE` pairs, all
 * optional, in any order, each key at most once; whitespace around parts and
 * around `=` is ignored, and so are empty parts (`''` is a vif with every default).
 *
 * xl's keys:
 * - `mac=XX:XX:XX:XX:XX:XX`: six hex octets, either case (stored lower-case);
 *   multicast (low bit of the first octet set) and all-zero MACs are refused;
 * - `bridge=NAME` (default `xenbr0`) and `vifname=NAME`: `[A-Za-z0-9][A-Za-z0-9_.-]`,
 *   at most 15 characters;
 * - `rate=RATE/s[@INTERVAL]`: RATE a whole number 1 … 2^32 − 1 with a unit `B`,
 *   `KB`, `MB`, `GB` (bytes) or `b`, `Kb`, `Mb`, `Gb` (bits; divided by 8) — K, M
 *   and G are powers of 1000, as in xl's `libxlu_vif.c` — and INTERVAL a whole
 *   number with `us`, `ms` or `s` (default 50ms). As xl, the credit is
 *   `floor(bytesPerSecond × intervalUs / 10^6)` bytes, so `10Mb/s` = 62500 bytes
 *   per 50000 µs and `1MB/s@20ms` = 20000 bytes per 20000 µs. Unlike xl, an
 *   INTERVAL needs its unit (xl's man page says a bare number is µs, its parser
 *   reads seconds), numbers may not start with 0 (xl would read them as octal),
 *   and a rate that leaves less than one byte per interval is refused;
 * - `mtu=68..65535` (default 1500);
 * - `ip=ADDR[ ADDR...]`: IPv4 or IPv6 addresses, each with an optional `/PREFIX`;
 * - `type=vif` (the only type: accepted and ignored).
 *
 * pvio's extensions, each `0` or `1` (`on`/`off`, `yes`/`no` too, as for disks):
 * `persistent` (default 0: grant copy; 1: persistent buffer pool), `sg`, `gso`,
 * `csum-offload`, `split-event-channels` (absent: on where both ends support it),
 * and `queues=1..8`.
 *
 * xl's `model`, `script`, `backend`, `gatewaydev`, `netdev` and `devid` are refused
 * with the reason; any other key is unknown.
 *
 * @param spec one entry of the `vif` list
 * @returns the vif, with `bridge`, `mtu` and `persistent` defaulted (see {@link VifSpec})
 * @throws ConfigError (with no file or line; {@link parseConfig} adds them) naming
 *   the problem, e.g. `malformed vif spec 'mtu=9': mtu must be an integer 68..65535, got '9'`
 * @see docs/man/xl-network-configuration.5.pod
 */
export function parseVifSpec(spec: string): VifSpec {
  try {
    return parseVifSpecOrThrow(spec);
  } catch (e) {
    if (e instanceof LocatedProblem) throw new ConfigError(e.problem);
    throw e;
  }
}

function parseVifSpecOrThrow(spec: string): VifSpec {
  const bad = (why: string): LocatedProblem => new LocatedProblem(`malformed vif spec ${q(spec)}: ${why}`, undefined);
  const out: VifSpec = { bridge: DEFAULT_VIF_BRIDGE, mtu: DEFAULT_VIF_MTU, persistent: false };
  const seen = new Set<string>();
  for (const raw of spec.split(',')) {
    const part = raw.trim();
    if (part === '') continue;
    const m = /^([^=]*?)\s*=\s*([\s\S]*)$/.exec(part);
    if (!m) throw bad(`expected KEY=VALUE, found ${q(part)}`);
    const key = m[1]!;
    const v = m[2]!;
    if (Object.hasOwn(UNSUPPORTED_VIF_KEYS, key)) throw bad(`unsupported parameter ${q(key)}: ${UNSUPPORTED_VIF_KEYS[key]}`);
    if (!(VIF_KEYS as readonly string[]).includes(key)) {
      throw bad(`unknown parameter ${q(key)} (known: ${VIF_KEYS.join(', ')})`);
    }
    if (seen.has(key)) throw bad(`${key} given twice`);
    seen.add(key);
    applyVifKey(key as VifKey, v, out, bad);
  }
  return out;
}

/** Applies one of {@link VIF_KEYS} to `out`; throws `bad(...)` for a bad value. */
function applyVifKey(key: VifKey, v: string, out: VifSpec, bad: (why: string) => LocatedProblem): void {
  const bool = (): boolean => {
    if (v === '1' || v === 'on' || v === 'yes') return true;
    if (v === '0' || v === 'off' || v === 'no') return false;
    throw bad(`${key} must be 0 or 1, got ${q(v)}`);
  };
  const int = (min: number, max: number): number => {
    if (!/^[0-9]{1,6}$/.test(v) || Number(v) < min || Number(v) > max) throw bad(`${key} must be an integer ${min}..${max}, got ${q(v)}`);
    return Number(v);
  };
  const ifname = (): string => {
    if (!IFNAME_RE.test(v)) {
      throw bad(`bad ${key} ${q(v)}: use letters, digits, '_', '.', '-' (at most 15, not starting with '_', '.' or '-')`);
    }
    return v;
  };
  switch (key) {
    case 'mac': out.mac = parseMac(v, bad); break;
    case 'bridge': out.bridge = ifname(); break;
    case 'vifname': out.vifname = ifname(); break;
    case 'rate': out.rate = parseRate(v, bad); break;
    case 'mtu': out.mtu = int(68, 65535); break;
    case 'ip': {
      const addrs = v.split(/\s+/).filter((a) => a !== '');
      if (addrs.length === 0) throw bad('ip needs at least one address');
      for (const a of addrs) {
        const m = /^([^/]+)(?:\/([0-9]{1,3}))?$/.exec(a);
        const family = m ? isIP(m[1]!) : 0;
        if (!m || family === 0 || (m[2] !== undefined && Number(m[2]) > (family === 4 ? 32 : 128))) {
          throw bad(`bad ip ${q(a)}: expected IPv4 or IPv6 addresses, each with an optional /PREFIX, separated by spaces`);
        }
      }
      out.ip = addrs;
      break;
    }
    case 'type':
      if (v !== 'vif') throw bad(`unsupported type ${q(v)} (only 'vif': pvio has no emulated NICs)`);
      break;
    case 'persistent': out.persistent = bool(); break;
    case 'queues': out.queues = int(1, MAX_VIF_QUEUES); break;
    case 'sg': out.sg = bool(); break;
    case 'gso': out.gso = bool(); break;
    case 'csum-offload': out.csumOffload = bool(); break;
    case 'split-event-channels': out.splitEventChannels = bool(); break;
  }
}

/** `XX:XX:XX:XX:XX:XX` → lower-case; refuses multicast and all-zero addresses. */
function parseMac(v: string, bad: (why: string) => LocatedProblem): string {
  if (!/^[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}$/.test(v)) {
    throw bad(`bad mac ${q(v)}: expected six hex octets XX:XX:XX:XX:XX:XX`);
  }
  const mac = v.toLowerCase();
  const octets = mac.split(':').map((o) => parseInt(o, 16));
  if (octets[0]! & 1) throw bad(`mac ${mac} is a multicast address (low bit of the first octet set)`);
  if (octets.every((o) => o === 0)) throw bad('mac 00:00:00:00:00:00 is not a valid address');
  return mac;
}

/** Multipliers of xl's rate units, in bytes (K/M/G are powers of 1000, as in libxlu_vif.c). */
const RATE_UNIT_BYTES: Record<string, bigint> = { '': 1n, K: 1000n, M: 1_000_000n, G: 1_000_000_000n };
const INTERVAL_UNIT_US: Record<string, bigint> = { us: 1n, ms: 1000n, s: 1_000_000n };

/**
 * `RATE/s[@INTERVAL]` → credit per interval, with xl's arithmetic: bytes per second
 * = RATE × unit (÷ 8, rounded down, for bits), credit = bytes per second ×
 * interval ÷ 10^6, rounded down. BigInt, since RATE × 10^9 × interval passes 2^53.
 *
 * @see tools/libs/util/libxlu_vif.c `xlu_vif_parse_rate()`
 */
function parseRate(v: string, bad: (why: string) => LocatedProblem): VifRate {
  const shape = 'expected RATE/s[@INTERVAL], RATE with a unit B, KB, MB, GB (bytes) or b, Kb, Mb, Gb (bits), INTERVAL with us, ms or s, e.g. 10Mb/s or 1MB/s@20ms';
  const at = v.indexOf('@');
  const ratePart = at < 0 ? v : v.slice(0, at);
  const intervalPart = at < 0 ? undefined : v.slice(at + 1);

  const r = /^([0-9]+)([KMG]?)([Bb])\/s$/.exec(ratePart);
  if (!r) throw bad(`bad rate ${q(v)}: ${shape}`);
  if (r[1]!.startsWith('0')) throw bad(`bad rate ${q(v)}: the rate must be a whole number from 1, without leading zeros`);
  const n = BigInt(r[1]!);
  if (n > BigInt(UINT32_MAX)) throw bad(`bad rate ${q(v)}: the number is over ${UINT32_MAX}`);
  let bytesPerSec = n * RATE_UNIT_BYTES[r[2]!]!;
  if (r[3] === 'b') bytesPerSec /= 8n;

  let intervalUs = BigInt(DEFAULT_RATE_INTERVAL_US);
  if (intervalPart !== undefined) {
    const i = /^([0-9]+)(us|ms|s)$/.exec(intervalPart);
    if (!i) throw bad(`bad rate ${q(v)}: ${shape}`);
    if (i[1]!.startsWith('0')) throw bad(`bad rate ${q(v)}: the interval must be a whole number from 1, without leading zeros`);
    intervalUs = BigInt(i[1]!) * INTERVAL_UNIT_US[i[2]!]!;
    if (intervalUs > BigInt(UINT32_MAX)) throw bad(`bad rate ${q(v)}: the interval is over ${UINT32_MAX} µs`);
  }

  const bytesPerInterval = (bytesPerSec * intervalUs) / 1_000_000n;
  if (bytesPerInterval < 1n) {
    throw bad(`bad rate ${q(v)}: less than one byte per ${intervalUs} µs interval; raise the rate or the interval`);
  }
  if (bytesPerInterval > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`bad rate ${q(v)}: over 2^53 bytes per interval`);
  return { bytesPerInterval: Number(bytesPerInterval), intervalUs: Number(intervalUs) };
}

/**
 * Parses the text of one config file (one guest domain).
 *
 * @param text the file's contents
 * @param opts.file name used in error messages (default `<config>`)
 * @param opts.baseDir directory that `kernel` and relative disk paths are resolved
 *   against (normally the config file's directory)
 * @returns the domain, with defaults filled in (`memoryMiB` 64, `vcpus` 1, no disks,
 *   no vifs) and absolute `kernel` and disk paths; nothing is checked on disk
 * @throws ConfigError for the first problem found — malformed line, unknown key, a
 *   key set twice, a value of the wrong type or range, a bad disk spec, a vdev used
 *   twice, a bad vif spec, a MAC used twice, more than 8 vifs, an unterminated list
 *   or string (at the line it opened), a missing `name` or `kernel` (no line)
 */
export function parseConfig(text: string, opts: { file?: string; baseDir: string }): DomainConfig {
  const file = opts.file ?? '<config>';
  try {
    return build(parseSettings(tokenize(text)), opts.baseDir);
  } catch (e) {
    if (e instanceof LocatedProblem) {
      throw new ConfigError(e.problem, e.line === undefined ? { file } : { file, line: e.line });
    }
    throw e;
  }
}

function build(settings: Map<Key, Setting>, baseDir: string): DomainConfig {
  const get = (k: Key): Setting | undefined => settings.get(k);

  const nameSetting = get('name');
  if (!nameSetting) throw new LocatedProblem("missing required key 'name'", undefined);
  const name = wantString(nameSetting);
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(name.value) || name.value.length > 64) {
    throw new LocatedProblem(
      `bad name ${q(name.value)}: use letters, digits, '_', '.', '-' (at most 64, not starting with '_', '.' or '-')`,
      name.line);
  }

  const kernelSetting = get('kernel');
  if (!kernelSetting) throw new LocatedProblem("missing required key 'kernel'", undefined);
  const kernel = wantString(kernelSetting);
  if (kernel.value === '') throw new LocatedProblem('kernel must not be empty', kernel.line);
  if (!KERNEL_EXTENSIONS.some((ext) => kernel.value.endsWith(ext))) {
    throw new LocatedProblem(
      `kernel ${q(kernel.value)} must be a TypeScript or JavaScript module (${KERNEL_EXTENSIONS.join(' ')})`,
      kernel.line);
  }

  const memory = get('memory');
  const vcpus = get('vcpus');
  const extra = get('extra');

  const disks: DiskSpec[] = [];
  const diskSetting = get('disk');
  if (diskSetting) {
    if (diskSetting.value.kind !== 'list') {
      throw new LocatedProblem(`disk must be a list of disk specs, e.g. [ 'file:disk.img,xvda,w' ], got ${valueKind(diskSetting.value)}`,
        diskSetting.value.line);
    }
    const seenVdev = new Map<string, number>();
    const seenPath = new Map<string, { line: number; disk: DiskSpec }>();
    for (const item of diskSetting.value.items) {
      if (item.kind !== 'string') {
        throw new LocatedProblem(`disk entries must be quoted strings, got number ${item.text}`, item.line);
      }
      let d: DiskSpec;
      try {
        d = parseDiskSpecOrThrow(item.value, baseDir);
      } catch (e) {
        if (e instanceof LocatedProblem) throw new LocatedProblem(e.problem, item.line);
        throw e;
      }
      const vLine = seenVdev.get(d.vdev);
      if (vLine !== undefined) throw new LocatedProblem(`vdev ${d.vdev} is used twice (also at line ${vLine})`, item.line);
      seenVdev.set(d.vdev, item.line);
      const other = seenPath.get(d.path);
      if (other && (!other.disk.readOnly || !d.readOnly)) {
        throw new LocatedProblem(
          `image ${q(d.path)} is attached twice (as ${other.disk.vdev} at line ${other.line}) and writable; attach it once, or read-only each time`,
          item.line);
      }
      seenPath.set(d.path, { line: item.line, disk: d });
      disks.push(d);
    }
  }

  const vifs: VifSpec[] = [];
  const vifSetting = get('vif');
  if (vifSetting) {
    if (vifSetting.value.kind !== 'list') {
      throw new LocatedProblem(`vif must be a list of vif specs, e.g. [ 'bridge=xenbr0' ], got ${valueKind(vifSetting.value)}`,
        vifSetting.value.line);
    }
    const seenMac = new Map<string, number>();
    for (const item of vifSetting.value.items) {
      if (item.kind !== 'string') {
        throw new LocatedProblem(`vif entries must be quoted strings, got number ${item.text}`, item.line);
      }
      if (vifs.length === MAX_VIFS) {
        throw new LocatedProblem(`too many vifs: at most ${MAX_VIFS} per guest`, item.line);
      }
      let v: VifSpec;
      try {
        v = parseVifSpecOrThrow(item.value);
      } catch (e) {
        if (e instanceof LocatedProblem) throw new LocatedProblem(e.problem, item.line);
        throw e;
      }
      if (v.mac !== undefined) {
        const mLine = seenMac.get(v.mac);
        if (mLine !== undefined) throw new LocatedProblem(`mac ${v.mac} is used twice (also at line ${mLine})`, item.line);
        seenMac.set(v.mac, item.line);
      }
      vifs.push(v);
    }
  }

  const config: DomainConfig = {
    name: name.value,
    memoryMiB: memory ? wantInt(memory, 'MiB', 1) : 64,
    vcpus: vcpus ? wantInt(vcpus, 'vCPU count', 1) : 1,
    kernel: isAbsolute(kernel.value) ? resolve(kernel.value) : resolve(baseDir, kernel.value),
    disks,
    vifs,
  };
  if (extra) config.extra = wantString(extra).value;
  return config;
}

/**
 * Reads and parses one config file. Relative paths in it are resolved against the
 * file's own directory.
 *
 * @param path path of the config file, as the user gave it (used in messages)
 * @returns the parsed domain (see {@link parseConfig})
 * @throws ConfigError if the file cannot be read (`PATH: cannot read config file:
 *   ...`, with the fs error as `cause`), is larger than 1 MiB, or is invalid
 */
export function loadConfig(path: string): DomainConfig {
  let text: string;
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    const st = fstatSync(fd);
    if (st.isDirectory()) throw Object.assign(new Error('is a directory'), { code: 'EISDIR' });
    // Checked before reading: `pvio up disk.img` must not slurp a disk image.
    if (st.size > MAX_CONFIG_BYTES) throw new ConfigError('config file is too large (over 1 MiB)', { file: path });
    text = readFileSync(fd, 'utf8');
  } catch (e) {
    if (e instanceof ConfigError) throw e;
    const err = e as NodeJS.ErrnoException;
    const why = err.code === 'ENOENT' ? 'no such file'
      : err.code === 'EISDIR' ? 'is a directory'
      : err.code === 'EACCES' ? 'permission denied'
      : (err.code ?? String(err.message).split('\n')[0]);
    throw new ConfigError(`cannot read config file: ${why}`, { file: path }, { cause: e });
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  if (text.length > MAX_CONFIG_BYTES) throw new ConfigError('config file is too large (over 1 MiB)', { file: path });
  return parseConfig(text, { file: path, baseDir: dirname(resolve(path)) });
}
