/**
 * `narrowlink login` end to end (kubeconfig → discovery → key → ClientLoginRequest → cache) and the renewal that
 * long-running commands run in-process with the same kubeconfig credential and the same proof key.
 */
import { createPrivateKey } from 'node:crypto';
import { generateProofKey, proofKeyX } from '@narrowlink/protocol';
import { type CacheLocation, type CachedLogin, writeLogin } from './cache.ts';
import { DEFAULT_NAMESPACE, readDiscovery, requestToken } from './exchange.ts';
import { type KubeSelection, kubeClientFor, loadKubeConfig } from './kubeconfig.ts';

/** Options of {@link login}. */
export interface LoginOptions extends KubeSelection {
  /** Where the discovery ConfigMap is (`-n`; default {@link DEFAULT_NAMESPACE}). */
  namespace?: string | undefined;
  /** Requested token lifetime, seconds (the operator caps it). */
  ttlSeconds?: number | undefined;
  /** How long to wait for the operator, ms. */
  timeoutMs?: number | undefined;
  cache?: CacheLocation;
}

/** Logs in to the context and caches the result; returns the entry (holding secrets: never print it) and its file. */
export async function login(options: LoginOptions = {}): Promise<{ entry: CachedLogin; file: string }> {
  const loaded = await loadKubeConfig(options);
  const target = { server: loaded.server, context: loaded.context };
  const client = await kubeClientFor(loaded);
  const namespace = options.namespace ?? DEFAULT_NAMESPACE;
  const discovery = await readDiscovery(client, namespace, target);
  // A fresh key per login: logging in again (or on another machine) never reuses a key another token is bound to.
  const key = generateProofKey();
  const issuedAt = new Date().toISOString();
  const issued = await requestToken(client, target, {
    namespace: discovery.loginNamespace,
    publicKeyX: key.x,
    ...(options.ttlSeconds ? { ttlSeconds: options.ttlSeconds } : {}),
    ...(options.timeoutMs ? { timeoutMs: options.timeoutMs } : {}),
  });
  const entry: CachedLogin = {
    version: 1,
    context: loaded.context,
    cluster: loaded.cluster,
    server: loaded.server,
    kubeconfig: loaded.kubeconfig,
    namespace,
    loginNamespace: discovery.loginNamespace,
    username: issued.username,
    groups: issued.groups,
    token: issued.token,
    expiresAt: issued.expiresAt,
    issuedAt,
    gatewayUrls: discovery.gatewayUrls,
    caPem: discovery.caPem,
    natProbePorts: discovery.natProbePorts,
    proofKeyPem: key.privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
  };
  return { entry, file: writeLogin(entry, options.cache) };
}

/**
 * Runs the exchange again for a cached context with the kubeconfig credential it was obtained with and the same
 * proof key (the open session's link signs its proofs with it), and rewrites the cache file.
 */
export async function renewLogin(entry: CachedLogin, options: { cache?: CacheLocation; timeoutMs?: number } = {}): Promise<CachedLogin> {
  const loaded = await loadKubeConfig({ ...(entry.kubeconfig ? { kubeconfig: entry.kubeconfig } : {}), context: entry.context });
  const client = await kubeClientFor(loaded);
  const issuedAt = new Date().toISOString();
  const issued = await requestToken(
    client,
    { server: loaded.server, context: loaded.context },
    { namespace: entry.loginNamespace, publicKeyX: proofKeyX(createPrivateKey(entry.proofKeyPem)), ...(options.timeoutMs ? { timeoutMs: options.timeoutMs } : {}) },
  );
  const renewed: CachedLogin = { ...entry, token: issued.token, expiresAt: issued.expiresAt, issuedAt, username: issued.username, groups: issued.groups };
  writeLogin(renewed, options.cache);
  return renewed;
}
