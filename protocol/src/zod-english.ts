/**
 * English messages for the protocol's schemas (issue 13). The schemas are built with `zod/mini`: it shares zod's
 * core (same checks, same issues), but each schema is a small object instead of one carrying zod's chainable
 * classic API, and a bundle keeps only the functions it calls — ~10 MiB less RSS in every process that parses the
 * protocol (measured as bundles loaded into a bare Node; docs/adr/0014). Unlike classic zod, `zod/mini` sets no
 * message locale (every message would read "Invalid input"), and the protocol's errors quote zod's messages.
 */
import { en } from 'zod/locales';
import * as z from 'zod/mini';

/**
 * Sets zod's English messages unless a locale is already set — what classic zod does on its first schema, so a
 * process that also loads classic zod, or chose another locale with `z.config`, sees no change. Idempotent.
 */
export function useEnglishMessages(): void {
  if (!z.config().localeError) z.config(en());
}
