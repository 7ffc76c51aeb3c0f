/**
 * The CLI's version, for `narrowlink --version` and `version -o json`. From the sources it is client-cli's
 * package.json; the published bundle and the single executable have no such file next to them, so their build
 * (client-cli/build/build.ts) defines `__NARROWLINK_CLI_VERSION__` and the file read is dropped from the bundle.
 */
import { createRequire } from 'node:module';

declare const __NARROWLINK_CLI_VERSION__: string | undefined;

/** The CLI's version (semver, e.g. `0.1.0`). */
export const CLI_VERSION: string =
  typeof __NARROWLINK_CLI_VERSION__ === 'string'
    ? __NARROWLINK_CLI_VERSION__
    : (createRequire(import.meta.url)('../package.json') as { version: string }).version;
