// The `pvio` command as a user runs it: the main job on a small file, a machine
// from an xl-style config, bad input (one line on stderr, non-zero status, no stack
// trace), and SIGINT tearing every domain down.
import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { guestPath } from './helpers.ts';

const BIN = fileURLToPath(new URL('../toolstack/bin/pvio.mjs', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'pvio-cli-'));
const env = { ...process.env, PVIO_DATA_DIR: join(dir, 'data') };
const run = (args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env, timeout: 60_000 });

let small: string;
let smallDigest: string;
beforeAll(() => {
  // 1 MiB + 300 bytes: not a multiple of 512, so the disk is floor(size/512) sectors.
  const data = randomBytes(1048576 + 300);
  small = join(dir, 'small.img');
  writeFileSync(small, data);
  smallDigest = createHash('sha256').update(data.subarray(0, Math.floor(data.length / 512) * 512)).digest('hex');
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('pvio up', () => {
  it('runs the main job on a small file: the guest digest equals the host digest, the scratch write verifies', () => {
    const r = run(['up', '--disk', small, '--scratch-mib', '4', '--no-progress']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toContain(`[guest] xvda sha256 ${smallDigest}`);
    expect(r.stdout).toMatch(/equal to the guest's \(OK\)/);
    expect(r.stdout).toMatch(/not a multiple of 512: the disk has floor\(1048876\/512\) = 2048 sectors/);
    expect(r.stdout).toMatch(/blkback carried 1048576 bytes of xvda over the ring; the disk has 1048576 bytes \(equal\)/);
    expect(r.stdout).toMatch(/\[guest\] xvdb: wrote 4\.0 MiB \+ flush .* verified/);
    expect(r.stdout).toMatch(/notifications per request: frontend→backend [0-9.]+/);
    expect(r.stdout).toMatch(/hypercalls by kind \{.*"grant_table_op":\d+/);
  });

  it('boots the guest of an xl-style config with its disks', () => {
    const cfg = join(dir, 'machine.cfg');
    writeFileSync(cfg, [
      '# a one-guest machine',
      'name = "hasher"',
      'memory = 32',
      'vcpus = 1',
      `kernel = "${guestPath('hash-disk.ts')}"`,
      `disk = [ 'file:${small},xvda,r' ]`,
    ].join('\n'));
    const r = run(['up', cfg, '--no-progress']);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain(`[hasher] xvda sha256 ${smallDigest}`);
  });

  const bad: Array<[string, string[], RegExp]> = [
    ['a missing disk', ['up', '--disk', '/nonexistent/disk.img'], /^pvio: cannot read disk \/nonexistent\/disk\.img: ENOENT/],
    ['a directory as a disk', ['up', '--disk', '/'], /^pvio: cannot read disk \/: EISDIR/],
    ['an unknown option', ['up', '--frob'], /^pvio: unknown option '--frob'/],
    ['an unknown command', ['boot'], /^pvio: unknown command 'boot'/],
  ];
  for (const [what, args, msg] of bad) {
    it(`rejects ${what} with one line on stderr and a non-zero status`, () => {
      const r = run(args);
      expect(r.status).not.toBe(0);
      expect(r.stderr).toMatch(msg);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    });
  }

  it('rejects a malformed config line, naming the file and line', () => {
    const cfg = join(dir, 'bad.cfg');
    writeFileSync(cfg, 'name = "x"\nkernel = "g.ts"\ndisk = [ "nonsense" ]\n');
    const r = run(['up', cfg]);
    expect(r.status).not.toBe(0);
    expect(r.stderr.trim()).toBe(`pvio: ${cfg}:3: malformed disk spec 'nonsense': expected PATH,VDEV,MODE`);
  });

  it('SIGINT tears every domain down and exits', async () => {
    const cfg = join(dir, 'forever.cfg');
    mkdirSync(dir, { recursive: true });
    writeFileSync(cfg, `name = "forever"\nkernel = "${guestPath('forever.ts')}"\n`);
    const child = spawn(process.execPath, [BIN, 'up', cfg, '--no-progress'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
    const deadline = Date.now() + 30_000;
    while (!out.includes('forever: running') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(out).toContain('[forever] forever: running');
    child.kill('SIGINT');
    const code = await Promise.race([exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 15_000))]);
    if (code === 'hung') child.kill('SIGKILL');
    expect(code).toBe(130);
    expect(err).toMatch(/interrupted, tearing every domain down/);
  });
});
