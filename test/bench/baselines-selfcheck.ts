/**
 * Smoke-run the baselines and print their numbers as JSON lines:
 *   node test/bench/baselines-selfcheck.ts [MiB]   (default 256)
 */
import { stopAll } from '../helpers/processes.ts';
import { measureParallel, measureRawTcp, measureSshForward, startSinkProcess } from './baselines.ts';

const mib = Number(process.argv[2] ?? 256);
const bytes = mib * 1024 * 1024;

function report(name: string, result: object): void {
  const rounded = Object.fromEntries(
    Object.entries(result).map(([k, v]) => [k, typeof v === 'number' && !Number.isInteger(v) ? Math.round(v * 10) / 10 : v]),
  );
  process.stdout.write(`${JSON.stringify({ name, ...rounded })}\n`);
}

try {
  report(`raw tcp ${mib} MiB`, await measureRawTcp({ bytes }));
  report(`raw tcp ${mib} MiB, no hash`, await measureRawTcp({ bytes, verify: false }));
  report(`ssh -L ${mib} MiB`, await measureSshForward({ bytes }));
  report(`ssh -L ${mib} MiB aes128-gcm`, await measureSshForward({ bytes, cipher: 'aes128-gcm@openssh.com' }));
  report(`ssh -L ${mib} MiB, no hash`, await measureSshForward({ bytes, verify: false }));
  const sink = await startSinkProcess();
  try {
    report(`raw tcp 16 x ${mib / 16} MiB`, await measureParallel(sink.port, 16, bytes / 16));
  } finally {
    await sink.close();
  }
  report(`ssh -L 16 x ${mib / 16} MiB`, await measureSshForward({ bytes: bytes / 16, streams: 16 }));
} finally {
  await stopAll();
}
