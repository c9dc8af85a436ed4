/**
 * Builds the conformance programs of this folder against Xen's public headers
 * (Debian's libxen-dev) with gcc, for test/conformance.test.ts:
 * - `layouts.c`, natively, run: sizeof/offsetof/constants as JSON (x86_64);
 * - `layouts.c` with `-m32 -ffreestanding -S -DLAYOUT_ASM`: the same values for
 *   i386, read from the assembly (compile only, so no 32-bit libc is needed);
 * - `ring-script.c`, natively: io/ring.h's macros driven by a script.
 *
 * A missing gcc or missing headers is an error that says what is missing and how
 * to install it; nothing here ever skips.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** This folder: the C sources. */
export const CONFORMANCE_DIR = dirname(fileURLToPath(import.meta.url));
/** The command that installs what these programs need. */
export const SETUP_COMMAND = 'bash scripts/setup-debian.sh libxen-dev gcc';

/** The headers the programs include, as `#include <...>` names. */
export const XEN_HEADERS = [
  'xen/xen.h', 'xen/grant_table.h', 'xen/io/ring.h', 'xen/io/blkif.h', 'xen/io/netif.h',
  'xen/io/xs_wire.h', 'xen/io/console.h',
] as const;

/** `{key: value}` from layouts.c (see its header comment for the key scheme). */
export type CValues = Readonly<Record<string, number>>;

/** Struct members that exist only in headers newer than Debian 12's Xen 4.17. */
export interface OptionalMembers {
  /** `xenstore_domain_interface.evtchn_port` (appended after 4.17, for dom0less). */
  xsEvtchnPort: boolean;
  /** `xencons_interface.connection` (appended in 4.21). */
  xenconsConnection: boolean;
}

/** Everything the conformance test needs from C. */
export interface Toolchain {
  /** gcc's first `--version` line, for messages. */
  gccVersion: string;
  optional: OptionalMembers;
  /** layouts.c built natively (x86_64) and run. */
  native: CValues;
  /** layouts.c compiled for i386 (`-m32`), values read from the assembly. */
  i386: CValues;
  /** Path of the built ring-script program. */
  ringScript: string;
  /** Scratch directory (removed by {@link disposeToolchain}). */
  dir: string;
}

const CFLAGS = ['-std=gnu11', '-Wall', '-Wextra'];

function run(cmd: string, args: string[], input?: string): { status: number | null; stdout: string; stderr: string; error?: Error } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', input, timeout: 60_000, maxBuffer: 64 << 20 });
  return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '', error: r.error };
}

function missing(what: string): Error {
  return new Error(`${what} — the conformance test needs gcc and Xen's public headers (Debian package libxen-dev); ` +
    `install them with \`${SETUP_COMMAND}\``);
}

function gcc(args: string[], what: string, input?: string): string {
  const r = run('gcc', args, input);
  if (r.error) throw missing(`gcc could not be run (${r.error.message})`);
  if (r.status !== 0) throw new Error(`gcc failed to ${what}:\n$ gcc ${args.join(' ')}\n${r.stderr}`);
  return r.stdout;
}

/** True when `member` of `struct tag` exists in the installed headers (a syntax-only probe). */
function hasMember(header: string, tag: string, member: string): boolean {
  const src = `#include <stddef.h>\n#include <stdint.h>\n#include <${header}>\n` +
    `int probe = (int)offsetof(struct ${tag}, ${member});\n`;
  const r = run('gcc', [...CFLAGS, '-fsyntax-only', '-x', 'c', '-'], src);
  return r.status === 0;
}

/**
 * Reads `const int c_<key> = value;` globals back from gcc's assembly: the first
 * data directive after each `c_<key>:` label (`.long N`, `.value N`, `.byte N`,
 * `.quad N`, or `.zero n` for a zero).
 */
export function parseAsmValues(asm: string): Record<string, number> {
  const out: Record<string, number> = {};
  let label: string | undefined;
  for (const raw of asm.split('\n')) {
    const line = raw.trim();
    const m = /^c_(\w+):$/.exec(line);
    if (m) {
      label = m[1];
      continue;
    }
    if (label === undefined) continue;
    const d = /^\.(long|value|short|byte|quad|zero)\s+(-?\d+)/.exec(line);
    if (d) {
      out[label] = d[1] === 'zero' ? 0 : Number(d[2]);
      label = undefined;
    }
  }
  return out;
}

/**
 * Checks gcc and the headers, then builds and runs the programs. Takes about a
 * second.
 * @throws Error saying what is missing and the setup command, or gcc's output.
 */
export function buildToolchain(): Toolchain {
  const version = run('gcc', ['--version']);
  if (version.error || version.status !== 0) {
    throw missing(`gcc is not installed (running \`gcc --version\` failed: ${version.error?.message ?? version.stderr.trim()})`);
  }
  const gccVersion = version.stdout.split('\n')[0];

  const probe = run('gcc', [...CFLAGS, '-fsyntax-only', '-x', 'c', '-'],
    `#include <stddef.h>\n#include <stdint.h>\n${XEN_HEADERS.map((h) => `#include <${h}>`).join('\n')}\n`);
  if (probe.status !== 0) {
    const notFound = /fatal error: (\S+): No such file/.exec(probe.stderr);
    if (notFound) throw missing(`Xen's public header <${notFound[1]}> is not installed`);
    throw new Error(`gcc cannot compile Xen's public headers (${XEN_HEADERS.join(', ')}):\n${probe.stderr}`);
  }

  const optional: OptionalMembers = {
    xsEvtchnPort: hasMember('xen/io/xs_wire.h', 'xenstore_domain_interface', 'evtchn_port'),
    xenconsConnection: hasMember('xen/io/console.h', 'xencons_interface', 'connection'),
  };
  const defines = [
    ...(optional.xsEvtchnPort ? ['-DHAVE_XS_EVTCHN_PORT'] : []),
    ...(optional.xenconsConnection ? ['-DHAVE_XENCONS_CONNECTION'] : []),
  ];

  const dir = mkdtempSync(join(tmpdir(), 'pvio-conformance-'));
  try {
    const layoutsC = join(CONFORMANCE_DIR, 'layouts.c');
    const layoutsBin = join(dir, 'layouts');
    gcc([...CFLAGS, ...defines, '-o', layoutsBin, layoutsC], 'build layouts.c (x86_64)');
    const ran = run(layoutsBin, []);
    if (ran.error || ran.status !== 0) throw new Error(`layouts (x86_64) failed: ${ran.error?.message ?? ran.stderr}`);
    const native = JSON.parse(ran.stdout) as Record<string, number>;

    const asmFile = join(dir, 'layouts-i386.s');
    gcc([...CFLAGS, ...defines, '-m32', '-ffreestanding', '-DLAYOUT_ASM', '-S', '-o', asmFile, layoutsC],
      'compile layouts.c for i386 (-m32 -ffreestanding -S)');
    const i386 = parseAsmValues(readFileSync(asmFile, 'utf8'));

    const ringScript = join(dir, 'ring-script');
    gcc([...CFLAGS, '-O2', '-o', ringScript, join(CONFORMANCE_DIR, 'ring-script.c')], 'build ring-script.c');

    return { gccVersion, optional, native: Object.freeze(native), i386: Object.freeze(i386), ringScript, dir };
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

/** Removes the toolchain's scratch directory. */
export function disposeToolchain(t: Toolchain): void {
  rmSync(t.dir, { recursive: true, force: true });
}

/** Output of one ring-script run: its decision lines and the ring's bytes. */
export interface RingScriptResult {
  lines: string[];
  bytes: Uint8Array;
}

/**
 * Runs the C ring-script program on `script` (lines, see ring-script.c).
 * @throws Error with the program's stderr when it refuses the script.
 */
export function runRingScript(t: Toolchain, name: string, script: readonly string[]): RingScriptResult {
  const scriptFile = join(t.dir, `${name}.script`);
  const outFile = join(t.dir, `${name}.ring`);
  writeFileSync(scriptFile, `${script.join('\n')}\n`);
  const r = run(t.ringScript, [scriptFile, outFile]);
  if (r.error || r.status !== 0) throw new Error(`ring-script ${name} failed: ${r.error?.message ?? r.stderr}`);
  return { lines: r.stdout.trimEnd().split('\n'), bytes: new Uint8Array(readFileSync(outFile)) };
}
