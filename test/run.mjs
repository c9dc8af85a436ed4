#!/usr/bin/env node
// The README's test command (`npm test`): runs vitest once with its JSON reporter and
// ends with exactly one line `N passed, N failed`, exiting non-zero on any failure
// (CI reads that line, not vitest's own summary).
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
// The conformance test compiles Xen's public headers with gcc; the NBD export tests
// drive pvio with qemu-img/qemu-io (qemu-utils), nbdinfo (libnbd-bin) and fio; the pcap
// tests have tshark decode captures; the TAP tests need socat, ip (iproute2), ping and
// nc (netcat-openbsd): install them first (quiet and quick when present).
// If that fails, vitest still runs, and the tests that need them fail saying what is
// missing.
const packages = ['libxen-dev', 'gcc', 'qemu-utils', 'libnbd-bin', 'fio', 'tshark', 'socat', 'iproute2', 'iputils-ping', 'netcat-openbsd'];
const setup = spawnSync('bash', [join(root, 'scripts', 'setup-debian.sh'), ...packages], { cwd: root, stdio: 'inherit' });
if (setup.status !== 0) {
  console.error(`test/run.mjs: scripts/setup-debian.sh ${packages.join(' ')} failed (${setup.error?.message ?? `exit ${setup.status}`}); running the tests anyway`);
}
const out = join(root, 'test-results.json');
rmSync(out, { force: true });
const vitest = join(root, 'node_modules', 'vitest', 'vitest.mjs');
const r = spawnSync(process.execPath,
  [vitest, 'run', '--reporter=default', '--reporter=json', `--outputFile=${out}`, ...process.argv.slice(2)],
  { cwd: root, stdio: 'inherit' });
let passed = 0;
let failed = 0;
if (existsSync(out)) {
  const j = JSON.parse(readFileSync(out, 'utf8'));
  passed = j.numPassedTests ?? 0;
  failed = (j.numFailedTests ?? 0) + (j.numRuntimeErrorTestSuites ?? 0);
  // A file that failed to load counts as a failure even if it declared no tests.
  for (const f of j.testResults ?? []) if (f.status === 'failed' && (f.assertionResults ?? []).length === 0) failed++;
} else {
  failed = 1;
}
if (r.status !== 0 && failed === 0) failed = 1;
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed > 0 || passed === 0 ? 1 : 0);
