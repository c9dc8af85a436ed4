import { describe, expect, it } from 'vitest';
import { PvioError } from '../rings/errors.ts';
import { parseCli, USAGE, UsageError } from '../toolstack/args.ts';

/** The UsageError message that parsing `argv` raises. */
function usageError(argv: string[]): string {
  try {
    parseCli(argv);
  } catch (e) {
    expect(e).toBeInstanceOf(UsageError);
    expect(e).toBeInstanceOf(PvioError);
    expect((e as UsageError).code).toBe('PVIO_ERR_USAGE');
    expect((e as Error).message).not.toContain('\n');
    return (e as Error).message;
  }
  throw new Error(`expected a UsageError for ${JSON.stringify(argv)}`);
}

describe('parseCli: good command lines', () => {
  it('up with defaults', () => {
    expect(parseCli(['up'])).toEqual({ command: 'up', quiet: false, progress: true, detach: false });
    expect(parseCli(['up', 'machine.cfg'])).toEqual({ command: 'up', config: 'machine.cfg', quiet: false, progress: true, detach: false });
  });

  it('up with every option, in both spellings and any order', () => {
    const want = { command: 'up', config: 'vm.cfg', disk: 'd.img', scratchMiB: 96, quiet: true, progress: false, detach: false };
    expect(parseCli(['up', 'vm.cfg', '--disk', 'd.img', '--scratch-mib', '96', '--quiet', '--no-progress'])).toEqual(want);
    expect(parseCli(['--no-progress', '-q', 'up', '--disk=d.img', '--scratch-mib=96', 'vm.cfg'])).toEqual(want);
  });

  it('-- ends the options', () => {
    expect(parseCli(['up', '--', '--weird.cfg'])).toMatchObject({ command: 'up', config: '--weird.cfg' });
  });

  it('a value may start with a dash when given with =', () => {
    expect(parseCli(['up', '--disk=-x.img'])).toMatchObject({ disk: '-x.img' });
  });

  it('help and version', () => {
    expect(parseCli([])).toEqual({ command: 'help' });
    expect(parseCli(['help'])).toEqual({ command: 'help' });
    expect(parseCli(['--help'])).toEqual({ command: 'help' });
    expect(parseCli(['up', 'vm.cfg', '-h'])).toEqual({ command: 'help' });
    expect(parseCli(['--version'])).toEqual({ command: 'version' });
  });

  it('USAGE names every command and option', () => {
    for (const word of ['pvio up', 'pvio help', '--version', '--disk', '--scratch-mib', '--quiet', '--no-progress', '--nbd PORT', '--nbd-socket PATH', '--read-only', '--dom0-vcpus N', '--pcap FILE']) {
      expect(USAGE).toContain(word);
    }
  });
});

describe('parseCli: bad command lines give one-line UsageErrors', () => {
  it('unknown option', () => {
    expect(usageError(['up', '--frob'])).toBe("unknown option '--frob'");
    expect(usageError(['--frob=1', 'up'])).toBe("unknown option '--frob'");
    expect(usageError(['up', '-x'])).toBe("unknown option '-x'");
    expect(usageError(['--version', '--frob'])).toBe("unknown option '--frob'");
  });

  it('unknown command', () => {
    expect(usageError(['down'])).toMatch(/^unknown command 'down'/);
    expect(usageError(['vm.cfg', 'up'])).toMatch(/^unknown command 'vm\.cfg'/);
  });

  it('missing value', () => {
    expect(usageError(['up', '--disk'])).toBe("option '--disk' needs a value");
    expect(usageError(['up', '--disk', '--quiet'])).toBe("option '--disk' needs a value");
    expect(usageError(['up', '--disk='])).toBe("option '--disk' needs a value");
    expect(usageError(['up', '--scratch-mib'])).toBe("option '--scratch-mib' needs a value");
  });

  it('a --scratch-mib that is not a whole number of MiB', () => {
    for (const bad of ['abc', '1.5', '1e3', '0x10', '0', '-5', ' 8', '99999999999999']) {
      expect(usageError(['up', `--scratch-mib=${bad}`]), bad).toMatch(/^option '--scratch-mib' needs a whole number of MiB/);
    }
    expect(usageError(['up', '--scratch-mib', 'lots'])).toContain("got 'lots'");
  });

  it('a value given to a flag, an option twice, extra arguments, no command', () => {
    expect(usageError(['up', '--quiet=yes'])).toBe("option '--quiet' does not take a value");
    expect(usageError(['up', '--disk', 'a', '--disk', 'b'])).toBe("option '--disk' is given more than once");
    expect(usageError(['up', 'a.cfg', 'b.cfg'])).toMatch(/^unexpected argument 'b\.cfg'/);
    expect(usageError(['--quiet'])).toMatch(/^missing command/);
  });

  it('control characters are escaped, so the message stays on one line', () => {
    expect(usageError(['up', '--fr\nob'])).toBe("unknown option '--fr\\x0aob'");
  });
});

describe('parseCli: the NBD export', () => {
  it('--nbd PORT and --nbd-socket PATH, writable unless --read-only', () => {
    expect(parseCli(['up', '--disk', 'd.img', '--nbd', '10809'])).toEqual({
      command: 'up', disk: 'd.img', quiet: false, progress: true, detach: false, nbd: { listen: { port: 10809 }, readOnly: false },
    });
    expect(parseCli(['up', '--disk=d.img', '--nbd=0', '--read-only', '-q'])).toMatchObject({ quiet: true, nbd: { listen: { port: 0 }, readOnly: true } });
    expect(parseCli(['up', '--nbd-socket', '/run/x.sock', '--disk', 'd.img'])).toMatchObject({ nbd: { listen: { path: '/run/x.sock' }, readOnly: false } });
  });

  it('rejects a bad port, both listeners, CONFIG, --scratch-mib, a missing --disk, and --read-only alone', () => {
    for (const bad of ['65536', '-1', 'http', '1.5', '0x50', '']) {
      expect(usageError(['up', '--disk', 'd.img', `--nbd=${bad}`]), bad).toMatch(bad === '' ? /needs a value/ : /^option '--nbd' needs a TCP port from 0 to 65535/);
    }
    expect(usageError(['up', '--disk', 'd', '--nbd', '1', '--nbd-socket', 's'])).toBe("options '--nbd' and '--nbd-socket' cannot be used together");
    expect(usageError(['up', 'vm.cfg', '--disk', 'd', '--nbd', '1'])).toBe("option '--nbd' serves --disk FILE and cannot be used with CONFIG");
    expect(usageError(['up', '--disk', 'd', '--nbd', '1', '--scratch-mib', '8'])).toBe("option '--scratch-mib' does not apply with '--nbd'");
    expect(usageError(['up', '--nbd-socket', 's'])).toBe("option '--nbd-socket' needs --disk FILE");
    expect(usageError(['up', '--disk', 'd', '--read-only'])).toBe("option '--read-only' needs --nbd or --nbd-socket");
  });
});

describe('parseCli: --dom0-vcpus', () => {
  it('takes 1 to 32 and is absent by default', () => {
    expect(parseCli(['up', '--dom0-vcpus', '2'])).toMatchObject({ command: 'up', dom0Vcpus: 2 });
    expect(parseCli(['up', '--dom0-vcpus=32', '--disk', 'd.img', '--nbd', '0'])).toMatchObject({ dom0Vcpus: 32, nbd: { listen: { port: 0 } } });
    expect(parseCli(['up'])).not.toHaveProperty('dom0Vcpus');
    for (const bad of ['0', '33', 'two', '1.5', '-1', '0x2']) {
      expect(usageError(['up', `--dom0-vcpus=${bad}`]), bad).toMatch(/^option '--dom0-vcpus' needs a whole number from 1 to 32/);
    }
  });
});

describe('parseCli: --pcap', () => {
  it('takes a file, as given, alone or with CONFIG or --disk, and is absent by default', () => {
    expect(parseCli(['up', '--pcap', 'bridge.pcap'])).toEqual({ command: 'up', pcap: 'bridge.pcap', quiet: false, progress: true, detach: false });
    expect(parseCli(['up', 'vm.cfg', '--pcap=../out/x.pcap'])).toEqual(
      { command: 'up', config: 'vm.cfg', pcap: '../out/x.pcap', quiet: false, progress: true, detach: false });
    expect(parseCli(['--pcap', '/tmp/a b.pcap', 'up', '--disk', 'd.img', '--scratch-mib', '8'])).toMatchObject(
      { disk: 'd.img', scratchMiB: 8, pcap: '/tmp/a b.pcap' });
    expect(parseCli(['up', '--pcap=-x.pcap'])).toMatchObject({ pcap: '-x.pcap' });
    expect(parseCli(['up', 'vm.cfg'])).not.toHaveProperty('pcap');
  });

  it('an empty or missing value, or --pcap twice, is a usage error', () => {
    expect(usageError(['up', '--pcap='])).toBe("option '--pcap' needs a value");
    expect(usageError(['up', '--pcap', ''])).toBe("option '--pcap' needs a value");
    expect(usageError(['up', '--pcap'])).toBe("option '--pcap' needs a value");
    expect(usageError(['up', '--pcap', '--quiet'])).toBe("option '--pcap' needs a value");
    expect(usageError(['up', '--pcap', 'a', '--pcap', 'b'])).toBe("option '--pcap' is given more than once");
  });

  it("has a line under \"Options for 'up'\"", () => {
    const up = USAGE.slice(USAGE.indexOf("Options for 'up':"), USAGE.indexOf('Options anywhere:'));
    expect(up).toMatch(/^ {2}--pcap FILE {9}capture every frame crossing dom0's bridge to FILE, in pcap$/m);
  });
});

describe('pvio bench', () => {
  it('passes the benchmark its own arguments untouched', () => {
    expect(parseCli(['bench', 'ring', '--json', 'out.json', '--quick'])).toEqual({ command: 'bench', what: 'ring', argv: ['--json', 'out.json', '--quick'] });
  });
  it('rejects a missing or unknown benchmark in one line', () => {
    expect(() => parseCli(['bench'])).toThrow(/bench needs a benchmark name/);
    expect(() => parseCli(['bench', 'disk'])).toThrow(/unknown benchmark 'disk'/);
  });

  it('commands on a running machine: their arguments, --machine, and one clear error each', () => {
    expect(parseCli(['list'])).toEqual({ command: 'control', op: 'list', args: [] });
    expect(parseCli(['xenstore-ls', '--machine', 'm1'])).toEqual({ command: 'control', op: 'xenstore-ls', args: [], machine: 'm1' });
    expect(parseCli(['xenstore-write', '/a/b', 'v w'])).toEqual({ command: 'control', op: 'xenstore-write', args: ['/a/b', 'v w'] });
    expect(parseCli(['block-attach', 'g', 'file:/x.img,xvdb,w'])).toMatchObject({ op: 'block-attach', args: ['g', 'file:/x.img,xvdb,w'] });
    expect(parseCli(['shutdown'])).toMatchObject({ op: 'shutdown', args: [] });
    expect(parseCli(['network-attach', 'g'])).toMatchObject({ op: 'network-attach', args: ['g'] });
    expect(() => parseCli(['xenstore-read'])).toThrow("'xenstore-read' needs 1 argument");
    expect(() => parseCli(['list', 'x'])).toThrow("unexpected argument 'x': 'list' takes none");
    expect(() => parseCli(['destroy', 'a', 'b'])).toThrow("unexpected argument 'b': 'destroy' takes at most 1");
    expect(() => parseCli(['list', '--quiet'])).toThrow("option '--quiet' does not apply to 'list'");
    expect(() => parseCli(['list', '--machine', 'a/b'])).toThrow(UsageError);
    expect(parseCli(['up', '--detach', '--machine', 'lab-1'])).toMatchObject({ command: 'up', detach: true, machine: 'lab-1' });
    expect(() => parseCli(['up', '--disk', 'd', '--nbd', '1', '--detach'])).toThrow("option '--detach' cannot be used with '--nbd'");
  });
});

