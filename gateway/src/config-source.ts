/**
 * Where the gateway's configuration comes from. The file source reads a YAML/JSON document
 * (the same document the operator later writes into a Secret) and reports every valid change;
 * an invalid change is reported as an error and the last good configuration stays in force.
 */
import { createHash } from 'node:crypto';
import { type FSWatcher, readFileSync, unwatchFile, watch, watchFile } from 'node:fs';
import { basename, dirname } from 'node:path';
import { type GatewayConfig, parseGatewayConfig } from '@narrowlink/protocol';

export interface ConfigSource {
  /**
   * Loads the first configuration and starts watching. The file source throws at once when the file
   * is missing or invalid; the Kubernetes source resolves once its Secret holds a valid document.
   */
  start(onChange: (config: GatewayConfig) => void, onError: (error: Error) => void): GatewayConfig | Promise<GatewayConfig>;
  stop(): void;
}

export class FileConfigSource implements ConfigSource {
  readonly path: string;
  readonly #pollIntervalMs: number;
  #watcher: FSWatcher | undefined;
  #lastDigest = '';
  #debounce: NodeJS.Timeout | undefined;

  /** @param pollIntervalMs stat polling period, a fallback for filesystems where fs.watch is silent. */
  constructor(path: string, options: { pollIntervalMs?: number } = {}) {
    this.path = path;
    this.#pollIntervalMs = options.pollIntervalMs ?? 1000;
  }

  #read(): { config: GatewayConfig; digest: string } {
    const text = readFileSync(this.path, 'utf8');
    const digest = createHash('sha256').update(text).digest('hex');
    return { config: parseGatewayConfig(text), digest };
  }

  start(onChange: (config: GatewayConfig) => void, onError: (error: Error) => void): GatewayConfig {
    const first = this.#read();
    this.#lastDigest = first.digest;
    const check = (): void => {
      clearTimeout(this.#debounce);
      // Editors and `kubectl cp` write in several steps; read once the burst is over.
      this.#debounce = setTimeout(() => {
        let next: { config: GatewayConfig; digest: string };
        try {
          next = this.#read();
        } catch (error) {
          // A half-written or deleted file during an atomic replace is not worth an error if it settles.
          onError(error as Error);
          return;
        }
        if (next.digest === this.#lastDigest) return;
        this.#lastDigest = next.digest;
        onChange(next.config);
      }, 50);
    };
    // Watch the directory, not the file: an atomic rename replaces the file's inode.
    const name = basename(this.path);
    try {
      this.#watcher = watch(dirname(this.path), (_event, changed) => {
        if (changed === null || changed === name || String(changed).startsWith('..')) check();
      });
      this.#watcher.on('error', () => undefined);
    } catch {
      this.#watcher = undefined;
    }
    watchFile(this.path, { interval: this.#pollIntervalMs }, check);
    return first.config;
  }

  stop(): void {
    clearTimeout(this.#debounce);
    this.#watcher?.close();
    unwatchFile(this.path);
  }
}

/** A fixed configuration, for embedding and tests; `update()` behaves like a reload. */
export class StaticConfigSource implements ConfigSource {
  #config: GatewayConfig;
  #onChange: ((config: GatewayConfig) => void) | undefined;
  constructor(config: GatewayConfig) {
    this.#config = config;
  }
  start(onChange: (config: GatewayConfig) => void): GatewayConfig {
    this.#onChange = onChange;
    return this.#config;
  }
  update(config: GatewayConfig): void {
    this.#config = config;
    this.#onChange?.(config);
  }
  stop(): void {
    this.#onChange = undefined;
  }
}
