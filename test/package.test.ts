// The package as its users get it: `npm pack` makes a tarball (its prepack script
// generates the type declarations), a new, empty project outside the repository
// installs it (its dependencies from the registry or npm's cache), and then
// - plain JavaScript (`main.mjs`) imports `{ Machine, parseDiskSpec }` from 'pvio',
//   boots a machine, creates a guest whose program is the project's own `guest.mjs`
//   with a disk image of the project and arguments, awaits the domain's exit and gets
//   the guest's result: the disk's SHA-256 as read through blkfront, equal to the
//   file's, and the arguments as passed;
// - TypeScript (`check.ts`, compiled with `tsc --noEmit` and skipLibCheck off, so the
//   generated declarations are checked too) uses the exported types, and a misuse the
//   types must refuse is refused (`@ts-expect-error` fails the build if it is not).
// The installed package is a copy, not a link back into the repository.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, realpathSync, rmSync, writeFileSync, lstatSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'pvio-package-'));
const project = join(dir, 'project');
const TSC = join(root, 'node_modules', '.bin', 'tsc');

/** Runs a command (never a shell) with a deadline. @returns its exit code, stdout and stderr. */
function run(cmd: string, args: string[], cwd: string, timeoutMs: number): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd, timeout: timeoutMs, maxBuffer: 16 << 20, env: { ...process.env, npm_config_audit: 'false', npm_config_fund: 'false' } },
      (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : null) ?? 1 : 0, stdout, stderr }));
  });
}

let tarball = '';
const disk = randomBytes(256 * 1024);

beforeAll(async () => {
  const packed = await run('npm', ['pack', '--pack-destination', dir], root, 120_000);
  expect(packed.code, packed.stderr).toBe(0);
  const tgz = readdirSync(dir).find((f) => f.endsWith('.tgz'));
  expect(tgz).toBeDefined();
  tarball = join(dir, tgz!);
  mkdirSync(project);
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'uses-pvio', private: true, type: 'module' }));
  const installed = await run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', tarball], project, 180_000);
  expect(installed.code, installed.stderr).toBe(0);
}, 300_000);

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('npm pack → install into an empty project', () => {
  it('the tarball holds the entry, the declarations and the sources, not the tests', async () => {
    const list = await run('tar', ['tzf', tarball], dir, 30_000);
    const files = list.stdout.split('\n');
    for (const f of ['package/index.mjs', 'package/testing.mjs', 'package/kit.mjs', 'package/types/kit/index.d.ts', 'package/types/testing/index.d.ts', 'package/types/toolstack/api.d.ts', 'package/toolstack/api.ts', 'package/hypervisor/worker-bootstrap.mjs', 'package/toolstack/bin/pvio.mjs']) {
      expect(files).toContain(f);
    }
    expect(files.some((f) => f.startsWith('package/test/'))).toBe(false);
    const pkg = join(project, 'node_modules', 'pvio');
    expect(lstatSync(pkg).isSymbolicLink()).toBe(false);
    expect(realpathSync(pkg).startsWith(realpathSync(root))).toBe(false);
  });

  it('plain JavaScript boots a machine and a guest of its own reads a disk of its own', async () => {
    writeFileSync(join(project, 'disk.img'), disk);
    writeFileSync(join(project, 'guest.mjs'), `import { createHash } from 'node:crypto';
export default async function main(k) {
  const d = k.devices.get('xvda');
  const h = createHash('sha256');
  for (let s = 0; s < d.sectors; s += 128) h.update(await d.read(s, Math.min(128, d.sectors - s)));
  return { digest: h.digest('hex'), sectors: d.sectors, args: k.args };
}
`);
    writeFileSync(join(project, 'kit.mjs'), `import { MockMachine, MockFrontend } from 'pvio/testing';
const mm = new MockMachine();
const fe = new MockFrontend(mm.dom(1), 0, 16);
const [m] = mm.dom(0).gnttab.map([{ domid: 1, ref: fe.ref, readonly: false }]);
console.log(JSON.stringify({ status: m.status, size: fe.ring.size }));
`);
    const kit = await run(process.execPath, ['kit.mjs'], project, 30_000);
    expect(kit.code, kit.stderr).toBe(0);
    expect(JSON.parse(kit.stdout)).toEqual({ status: 0, size: 128 }); // pvio/testing works from the package too
    writeFileSync(join(project, 'main.mjs'), `import { Machine, parseDiskSpec } from 'pvio';
const m = await Machine.boot({ onConsole: () => {} });
try {
  const g = await m.createGuest({ name: 'reader', memoryMiB: 32, vcpus: 1, kernel: './guest.mjs', args: { answer: 42 },
    disks: [parseDiskSpec('file:disk.img,xvda,r', process.cwd())] });
  const exit = await g.exit;
  console.log(JSON.stringify({ reason: exit.reason, value: exit.value, error: exit.error ?? null }));
} finally {
  await m.shutdown();
}
`);
    const r = await run(process.execPath, ['main.mjs'], project, 60_000);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { reason: number; value: { digest: string; sectors: number; args: unknown }; error: string | null };
    expect(out.error).toBeNull();
    expect(out.reason).toBe(0);
    expect(out.value.sectors).toBe(disk.length / 512);
    expect(out.value.digest).toBe(createHash('sha256').update(disk).digest('hex'));
    expect(out.value.args).toEqual({ answer: 42 });
  });

  it('TypeScript type-checks against the generated declarations, and they refuse a misuse', async () => {
    writeFileSync(join(project, 'check.ts'), `import { Machine, MachineError, parseDiskSpec, type DomainExit, type GuestSpec, type Kernel, type Blkfront } from 'pvio';
import { MockMachine } from 'pvio/testing';
import { FrontRing, XenbusBackend, type XenbusTransaction } from 'pvio/kit';
export const served: number = new MockMachine().dom(1).counters.maps;
export const ring: FrontRing = FrontRing.init(new Uint8Array(new SharedArrayBuffer(4096)), 64);
export abstract class MyBackend extends XenbusBackend {
  protected async advertise(tx: XenbusTransaction): Promise<void> {
    await tx.write(\`\${this.backendDir}/feature-x\`, '1');
  }
}
const spec: GuestSpec = { name: 'reader', memoryMiB: 32, vcpus: 1, kernel: './guest.mjs', disks: [parseDiskSpec('file:disk.img,xvda,r', '.')] };
export async function digestOf(): Promise<string> {
  const m: Machine = await Machine.boot({ onConsole: (domain: string, line: string) => void [domain, line] });
  const g = await m.createGuest(spec);
  const e: DomainExit = await g.exit;
  await m.shutdown();
  if (e.reason !== 0) throw new MachineError(e.error ?? 'crashed');
  return (e.value as { digest: string }).digest;
}
export default async function guest(k: Kernel): Promise<number> {
  return (k.devices.get('xvda') as Blkfront).sectors;
}
// @ts-expect-error memoryMiB is a number of MiB, not a string
export const bad: GuestSpec = { name: 'x', memoryMiB: '32', vcpus: 1, kernel: 'k.mjs' };
`);
    writeFileSync(join(project, 'tsconfig.json'), JSON.stringify({
      compilerOptions: {
        target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noEmit: true, skipLibCheck: false,
        types: ['node'], typeRoots: [join(root, 'node_modules', '@types')],
      },
      files: ['check.ts'],
    }));
    const r = await run(TSC, ['-p', '.'], project, 120_000);
    expect(r.code, `${r.stdout}${r.stderr}`).toBe(0);
  });
});
