/**
 * The control socket of a running machine, as xl talks to a running Xen: `pvio up`
 * listens on a Unix socket, and `pvio list`, `pvio xenstore-read`, `pvio
 * block-attach`, ... connect to it, send one request and print the answer.
 *
 * Where: `$XDG_RUNTIME_DIR/pvio/<machine>.sock`, else `/tmp/pvio-<uid>/<machine>.sock`;
 * the directory is created owner-only (0700) and must be owned by the user, the
 * socket is made owner-only (0600), and a client refuses a socket another user owns.
 *
 * Wire: one JSON object per line. Request `{ "id", "op", "args" }` (args: the
 * command's positional arguments, strings); answer `{ "id", "ok": true, "value" }` or
 * `{ "id", "ok": false, "error" }` (one line naming the problem).
 */
import { createServer, createConnection, type Server, type Socket } from 'node:net';
import { chmodSync, lstatSync, mkdirSync, readdirSync, statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { PvioError } from '../rings/errors.ts';

/** A control request could not be made or was refused (code `PVIO_ERR_CONTROL`); `message` is one line. */
export class ControlError extends PvioError {
  constructor(message: string) {
    super('PVIO_ERR_CONTROL', message);
  }
}

/** The user's id (0 where there is none, as on Windows). */
function uid(): number {
  return typeof process.getuid === 'function' ? process.getuid() : 0;
}

/**
 * The directory of this user's machine sockets, created owner-only if missing.
 * @throws ControlError when it exists but belongs to another user or is not a directory.
 */
export function runtimeDir(create = true): string {
  const dir = process.env.XDG_RUNTIME_DIR ? join(process.env.XDG_RUNTIME_DIR, 'pvio') : `/tmp/pvio-${uid()}`;
  if (create) mkdirSync(dir, { recursive: true, mode: 0o700 });
  try {
    const st = lstatSync(dir);
    if (!st.isDirectory()) throw new ControlError(`${dir} is not a directory`);
    if (st.uid !== uid()) throw new ControlError(`${dir} is not owned by you (uid ${st.uid})`);
  } catch (e) {
    if (e instanceof ControlError) throw e;
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  return dir;
}

/** Machine names: letters, digits, `-`, `_`, `.`; 1 to 64 of them, not starting with `.`. */
export const MACHINE_NAME = /^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$/;

/** The socket path of machine `name`. @throws ControlError for a bad name. */
export function socketPath(name: string): string {
  if (!MACHINE_NAME.test(name)) throw new ControlError(`bad machine name '${name.slice(0, 80)}' (letters, digits, '-', '_', '.')`);
  return join(runtimeDir(), `${name}.sock`);
}

/** Names of the machines whose sockets are in the runtime directory (running or stale). */
export function machineNames(): string[] {
  try {
    return readdirSync(runtimeDir(false)).filter((f) => f.endsWith('.sock')).map((f) => f.slice(0, -'.sock'.length)).sort();
  } catch {
    return [];
  }
}

/** Handles one request: `args` are the command's arguments; resolves with what to send back, or a {@link ControlStream}. */
export type ControlHandler = (args: string[]) => Promise<unknown> | unknown;

/** Both directions of a streaming command's connection, after its first answer. */
export interface StreamConnection {
  /** Sends one object (a line of JSON) to the client; nothing once it has gone. */
  send(msg: unknown): void;
  /** Calls `fn` with each object the client sends. */
  onMessage(fn: (msg: unknown) => void): void;
  /** Calls `fn` once when the client goes (or the connection breaks). */
  onClose(fn: () => void): void;
}

/**
 * What a handler returns to keep the connection open (as `pvio console` does): the
 * client gets `{ ok: true, value: 'stream' }`, then `start` gets the connection.
 */
export class ControlStream {
  constructor(readonly start: (conn: StreamConnection) => void) {}
}

/** A listening control socket. */
export class ControlServer {
  private constructor(private readonly server: Server, readonly path: string) {}

  /**
   * Listens on machine `name`'s socket. A stale socket (nobody answering) is replaced;
   * a live one means the name is taken.
   * @throws ControlError when the name is in use or the socket cannot be made.
   */
  static async listen(name: string, handlers: Readonly<Record<string, ControlHandler>>): Promise<ControlServer> {
    const path = socketPath(name);
    if (await answers(path)) throw new ControlError(`a machine named '${name}' is already running (${path})`);
    try {
      unlinkSync(path);
    } catch {
      /* none */
    }
    const server = createServer((sock) => serveConnection(sock, handlers));
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e) => reject(new ControlError(`cannot listen on ${path}: ${e.message}`)));
      server.listen(path, () => resolve());
    });
    chmodSync(path, 0o600);
    return new ControlServer(server, path);
  }

  /** Stops listening and removes the socket. */
  async close(): Promise<void> {
    await new Promise<void>((r) => this.server.close(() => r()));
    try {
      unlinkSync(this.path);
    } catch {
      /* gone */
    }
  }
}

function serveConnection(sock: Socket, handlers: Readonly<Record<string, ControlHandler>>): void {
  let buf = '';
  /** Set once a streaming command took the connection over: later lines go to it. */
  let streamInput: ((msg: unknown) => void) | null = null;
  const closers: Array<() => void> = [];
  sock.setEncoding('utf8');
  sock.on('error', () => undefined);
  sock.on('close', () => {
    for (const fn of closers.splice(0)) fn();
  });
  sock.on('data', (chunk: string) => {
    buf += chunk;
    if (buf.length > 1 << 20) {
      sock.destroy();
      return;
    }
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (streamInput) {
        try {
          streamInput(JSON.parse(line));
        } catch {
          /* not JSON: ignored */
        }
        continue;
      }
      void answer(line).then((reply) => {
        if (sock.destroyed) return;
        if (reply instanceof ControlStream) {
          sock.write(`${JSON.stringify({ id: 1, ok: true, value: 'stream' })}\n`);
          const inputs: Array<(m: unknown) => void> = [];
          streamInput = (m) => {
            for (const fn of inputs) fn(m);
          };
          reply.start({
            send: (m) => {
              if (!sock.destroyed) sock.write(`${JSON.stringify(m)}\n`);
            },
            onMessage: (fn) => void inputs.push(fn),
            onClose: (fn) => void closers.push(fn),
          });
          return;
        }
        sock.write(`${JSON.stringify(reply)}\n`);
      });
    }
  });

  async function answer(line: string): Promise<unknown | ControlStream> {
    let req: { id?: unknown; op?: unknown; args?: unknown };
    try {
      req = JSON.parse(line) as typeof req;
    } catch {
      return { id: null, ok: false, error: 'not a JSON request' };
    }
    const id = req.id ?? null;
    const op = typeof req.op === 'string' ? req.op : '';
    const args = Array.isArray(req.args) && req.args.every((a) => typeof a === 'string') ? req.args as string[] : null;
    const h = Object.hasOwn(handlers, op) ? handlers[op] : undefined;
    if (!h) return { id, ok: false, error: `unknown command '${op.slice(0, 40)}'` };
    if (!args) return { id, ok: false, error: 'args must be a list of strings' };
    try {
      const value = await h(args);
      if (value instanceof ControlStream) return value;
      return { id, ok: true, value: value ?? null };
    } catch (e) {
      return { id, ok: false, error: String((e as Error)?.message ?? e).split('\n')[0] };
    }
  }
}

/** Whether something answers on the socket at `path` (within 1 s). */
async function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection(path);
    const t = setTimeout(() => {
      s.destroy();
      resolve(false);
    }, 1000);
    s.once('connect', () => {
      clearTimeout(t);
      s.destroy();
      resolve(true);
    });
    s.once('error', () => {
      clearTimeout(t);
      resolve(false);
    });
  });
}

/**
 * Picks the machine a command talks to: `name` if given, else the only one running.
 * @throws ControlError when there is none, or several and no name.
 */
export function chooseMachine(name: string | undefined): string {
  if (name !== undefined) return name;
  const names = machineNames();
  if (names.length === 0) throw new ControlError("no running machine (start one with 'pvio up')");
  if (names.length > 1) throw new ControlError(`several machines are running (${names.join(', ')}): name one with --machine NAME`);
  return names[0];
}

/**
 * The socket path of machine `name`, once checked: it exists, is a socket and is
 * the user's own. @throws ControlError naming what is wrong.
 */
function checkedSocket(name: string): string {
  const path = socketPath(name);
  let st;
  try {
    st = statSync(path);
  } catch {
    throw new ControlError(`no machine named '${name}' is running`);
  }
  if (!st.isSocket()) throw new ControlError(`${path} is not a socket`);
  if (st.uid !== uid()) throw new ControlError(`the socket of machine '${name}' is not owned by you (uid ${st.uid})`);
  return path;
}

/**
 * Sends one request to machine `name` and returns its answer's value.
 * @throws ControlError: no such machine, a socket owned by another user, no answer
 *   within `timeoutMs`, or the machine's one-line refusal.
 */
export async function controlRequest(name: string, op: string, args: string[], timeoutMs = 60_000): Promise<unknown> {
  const path = checkedSocket(name);
  return new Promise((resolve, reject) => {
    const s = createConnection(path);
    let buf = '';
    const t = setTimeout(() => {
      s.destroy();
      reject(new ControlError(`machine '${name}' did not answer '${op}' within ${timeoutMs} ms`));
    }, timeoutMs);
    s.setEncoding('utf8');
    s.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(t);
      reject(new ControlError(e.code === 'ECONNREFUSED' || e.code === 'ENOENT' ? `no machine named '${name}' is running` : `machine '${name}': ${e.message}`));
    });
    s.on('data', (chunk: string) => {
      buf += chunk;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(t);
      s.end();
      let reply: { ok?: boolean; value?: unknown; error?: string };
      try {
        reply = JSON.parse(buf.slice(0, nl)) as typeof reply;
      } catch {
        reject(new ControlError(`machine '${name}' sent a bad answer`));
        return;
      }
      if (reply.ok) resolve(reply.value);
      else reject(new ControlError(reply.error ?? 'refused'));
    });
    s.once('connect', () => s.write(`${JSON.stringify({ id: 1, op, args })}\n`));
  });
}

/**
 * Opens a streaming command on machine `name` (as `pvio console`): resolves once the
 * machine accepted it; `onMessage` gets each object it sends; `send` sends one;
 * `close` ends it; `closed` resolves when the connection is gone.
 * @throws ControlError as {@link controlRequest}.
 */
export async function controlStream(name: string, op: string, args: string[], onMessage: (m: unknown) => void):
  Promise<{ send(m: unknown): void; close(): void; closed: Promise<void> }> {
  const path = checkedSocket(name);
  const s = createConnection(path);
  s.setEncoding('utf8');
  const closed = new Promise<void>((r) => s.once('close', () => r()));
  return new Promise((resolve, reject) => {
    let buf = '';
    let accepted = false;
    const t = setTimeout(() => {
      s.destroy();
      reject(new ControlError(`machine '${name}' did not answer '${op}'`));
    }, 30_000);
    s.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(t);
      if (!accepted) reject(new ControlError(e.code === 'ECONNREFUSED' || e.code === 'ENOENT' ? `no machine named '${name}' is running` : `machine '${name}': ${e.message}`));
    });
    s.on('data', (chunk: string) => {
      buf += chunk;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let m: { ok?: boolean; value?: unknown; error?: string };
        try {
          m = JSON.parse(line) as typeof m;
        } catch {
          continue;
        }
        if (accepted) {
          onMessage(m);
          continue;
        }
        clearTimeout(t);
        if (!m.ok) {
          s.destroy();
          reject(new ControlError(m.error ?? 'refused'));
          return;
        }
        accepted = true;
        resolve({
          send: (x) => {
            if (!s.destroyed) s.write(`${JSON.stringify(x)}\n`);
          },
          close: () => s.end(),
          closed,
        });
      }
    });
    s.once('connect', () => s.write(`${JSON.stringify({ id: 1, op, args })}\n`));
  });
}
