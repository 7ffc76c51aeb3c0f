/**
 * Swaps in a rotated TLS certificate without a restart or a dropped session: cert-manager renews the
 * gateway's Secret, the kubelet updates the mounted files (an atomic symlink swap), and new
 * handshakes use the new pair. A half-written pair (key and certificate not matching yet) is kept out
 * until both files agree.
 */
import { createHash } from 'node:crypto';
import { type FSWatcher, readFileSync, watch } from 'node:fs';
import type { Server } from 'node:https';
import { dirname } from 'node:path';
import { createSecureContext } from 'node:tls';
import { tlsServerOptions } from './app.ts';

export class TlsReloader {
  readonly #server: Server;
  readonly #certFile: string;
  readonly #keyFile: string;
  readonly #log: { info(obj: object, msg: string): void; warn(obj: object, msg: string): void };
  #digest: string;
  #watchers: FSWatcher[] = [];
  #poll: NodeJS.Timeout | undefined;
  #debounce: NodeJS.Timeout | undefined;
  reloads = 0;

  constructor(
    server: Server,
    certFile: string,
    keyFile: string,
    log: { info(obj: object, msg: string): void; warn(obj: object, msg: string): void },
    initial: { cert: string; key: string },
  ) {
    this.#server = server;
    this.#certFile = certFile;
    this.#keyFile = keyFile;
    this.#log = log;
    this.#digest = createHash('sha256').update(initial.cert).update(initial.key).digest('hex');
  }

  /** Watches both files' directories (Secret volumes swap a symlink) and polls as a fallback. */
  start(pollMs = 10_000): this {
    for (const dir of new Set([dirname(this.#certFile), dirname(this.#keyFile)])) {
      try {
        const watcher = watch(dir, () => this.#soon());
        watcher.on('error', () => undefined);
        this.#watchers.push(watcher);
      } catch {
        // polling covers it
      }
    }
    this.#poll = setInterval(() => this.check(), pollMs);
    this.#poll.unref();
    return this;
  }

  #soon(): void {
    clearTimeout(this.#debounce);
    this.#debounce = setTimeout(() => this.check(), 100);
    this.#debounce.unref();
  }

  /** Re-reads the pair; installs it when it changed and is consistent. Returns whether it did. */
  check(): boolean {
    let cert: string;
    let key: string;
    try {
      cert = readFileSync(this.#certFile, 'utf8');
      key = readFileSync(this.#keyFile, 'utf8');
    } catch (error) {
      this.#log.warn({ err: (error as Error).message }, 'cannot read the TLS files; keeping the current certificate');
      return false;
    }
    const digest = createHash('sha256').update(cert).update(key).digest('hex');
    if (digest === this.#digest) return false;
    const options = tlsServerOptions({ cert, key });
    try {
      createSecureContext(options); // throws when key and certificate do not belong together (yet)
    } catch (error) {
      this.#log.warn({ err: (error as Error).message }, 'new TLS files are not a matching pair yet; keeping the current certificate');
      return false;
    }
    this.#server.setSecureContext(options);
    this.#digest = digest;
    this.reloads++;
    this.#log.info({ event: 'tls-reloaded' }, 'TLS certificate reloaded');
    return true;
  }

  stop(): void {
    clearInterval(this.#poll);
    clearTimeout(this.#debounce);
    for (const watcher of this.#watchers) watcher.close();
  }
}
