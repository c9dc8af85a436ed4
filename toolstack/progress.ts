/**
 * Progress reporting for long byte-counted jobs (filling or copying a disk image).
 *
 * On a terminal it draws a cli-progress bar; on anything else (a pipe, a log file,
 * CI) it writes one plain line at each 25% step, so logs stay short and readable.
 */
import cliProgress from 'cli-progress';
import { invariant } from '../rings/errors.ts';

/** A running progress report: see {@link createProgress}. */
export interface Progress {
  /**
   * Reports that `doneBytes` bytes of the total are done (a running total, not an
   * increment). Values are clamped to `[0, total]`; a non-finite value is ignored;
   * calls after {@link stop} are ignored.
   */
  update(doneBytes: number): void;
  /**
   * Ends the report: a bar is drawn a last time and its line ended. Must be called,
   * even on failure: a live bar holds a redraw timer that keeps the process alive.
   * (A bar also stops by itself when it reaches the total.) Idempotent.
   */
  stop(): void;
  /**
   * Writes `text` (whole lines, ending in a newline) to `out` (default
   * process.stdout) without tearing a live bar: on a terminal the bar's line is
   * cleared first and the bar redrawn after.
   */
  log(text: string, out?: NodeJS.WritableStream): void;
}

/** Options of {@link createProgress}. */
export interface ProgressOptions {
  /** Total size of the job in bytes (a non-negative finite number). */
  total: number;
  /** What is in progress, printed first, e.g. the device name `xvda`. */
  label: string;
  /** Where to write; default `process.stderr`. A bar is drawn only if `isTTY` is true. */
  stream?: NodeJS.WriteStream;
  /** False gives a report whose methods do nothing (for `--quiet`/`--no-progress`). */
  enabled: boolean;
}

const MIB = 1024 * 1024;

/** `bytes` as MiB with one decimal, e.g. `48.2`. */
function mib(bytes: number): string {
  return (bytes / MIB).toFixed(1);
}

/**
 * Starts a progress report of a job of `total` bytes.
 *
 * - `enabled: false`: both methods are no-ops and nothing is written.
 * - `stream.isTTY`: a cli-progress bar, `LABEL [====----] 50% | 48.2/96.4 MiB | 12.3 MB/s`
 *   (MB/s is 10^6 bytes per second since the start, as disk tools print it), redrawn
 *   at most 10 times a second; it stops by itself on reaching `total`.
 * - otherwise: a line `LABEL: 50% (48.2 MiB of 96.4 MiB)` each time the work crosses
 *   a new multiple of 25% (25, 50, 75, 100), with the percentage actually reached;
 *   one line per update at most, however many steps it crossed. A job of 0 bytes
 *   prints `100%` on its first update.
 *
 * @throws InvariantError if `total` is negative or not finite (a bug in the caller)
 */
export function createProgress(opts: ProgressOptions): Progress {
  const { total, label, enabled } = opts;
  invariant(Number.isFinite(total) && total >= 0, `createProgress: bad total ${total}`);
  const plainLog = (text: string, out: NodeJS.WritableStream = process.stdout) => void out.write(text);
  if (!enabled) return { update() {}, stop() {}, log: plainLog };
  const stream = opts.stream ?? process.stderr;
  const clamp = (n: number): number => Math.min(Math.max(n, 0), total);

  if (stream.isTTY === true) {
    const start = Date.now();
    const bar = new cliProgress.SingleBar({
      stream,
      format: `${label} [{bar}] {percentage}% | {doneMiB}/{totalMiB} MiB | {speed} MB/s`,
      barsize: 30,
      hideCursor: null,
      clearOnComplete: false,
      // Not stopOnComplete: cli-progress 3.12 may re-arm its redraw timer after
      // stopping that way (SingleBar.update renders after GenericBar.update stopped).
      stopOnComplete: false,
      // The toolstack owns SIGINT/SIGTERM: the bar must not add handlers of its own.
      gracefulExit: false,
    }, cliProgress.Presets.shades_classic);
    const payload = (done: number): { doneMiB: string; totalMiB: string; speed: string } => {
      const secs = (Date.now() - start) / 1000;
      return { doneMiB: mib(done), totalMiB: mib(total), speed: secs > 0 ? (done / secs / 1e6).toFixed(1) : '0.0' };
    };
    let stopped = false;
    bar.start(total, 0, payload(0));
    return {
      update(doneBytes) {
        if (stopped || !Number.isFinite(doneBytes)) return;
        const done = clamp(doneBytes);
        bar.update(done, payload(done));
        if (done >= total) {
          stopped = true;
          bar.stop();
        }
      },
      stop() {
        if (stopped) return;
        stopped = true;
        bar.stop();
      },
      log(text, out = process.stdout) {
        if (stopped) return plainLog(text, out);
        stream.write('\r\x1b[2K'); // clear the bar's line, print above it, redraw
        out.write(text);
        bar.render();
      },
    };
  }

  const STEP = 25;
  let lastStep = 0; // highest multiple of 25% already printed
  let stopped = false;
  return {
    update(doneBytes) {
      if (stopped || !Number.isFinite(doneBytes)) return;
      const done = clamp(doneBytes);
      const pct = total === 0 ? 100 : Math.floor((done / total) * 100);
      const step = Math.floor(pct / STEP) * STEP;
      if (step <= lastStep) return;
      lastStep = step;
      stream.write(`${label}: ${pct}% (${mib(done)} MiB of ${mib(total)} MiB)\n`);
    },
    stop() {
      stopped = true;
    },
    log: plainLog,
  };
}
