/**
 * gather (the request from the cache) → desired ({@link planLogin}, pure) → apply: delete a stale request,
 * write a refusal, or take a rate-limit token, sign and write the token into status. The token is never
 * logged (its `jti` is).
 */
import { randomUUID } from 'node:crypto';
import { signToken } from '@narrowlink/protocol';
import { type ClientLoginRequest, LoginReason, loginRequestResource } from '../../crds/client-login-request.ts';
import type { ReconcileContext, ReconcileResult } from '../context.ts';
import { applyStatusIfChanged } from '../status.ts';
import { issuedStatus, type LoginSettings, planLogin, refusedStatus, rfc3339 } from './desired.ts';
import type { LoginRateLimiter } from './rate-limit.ts';

/** Outcomes counted by the operator's login metric (bounded label values). */
export type LoginOutcome = 'issued' | 'denied' | 'invalid' | 'rate_limited' | 'collected';

/** What the login reconciler needs besides the shared context. */
export interface LoginReconcileDeps {
  settings: LoginSettings;
  /** HMAC key of the webhook's stamp, derived from the signing key (the webhook derives the same). */
  stampKey: Buffer;
  rateLimiter: LoginRateLimiter;
  /** Request uids decided by this process, until collected: a stale cache never makes it sign twice. */
  decided: Map<string, number>;
  onOutcome?: (outcome: LoginOutcome) => void;
}

export async function reconcileLoginRequest(ctx: ReconcileContext, deps: LoginReconcileDeps, key: string): Promise<ReconcileResult> {
  // gather
  const cached = ctx.caches.loginRequests.get(key);
  if (!cached) return {};
  const request = cached as unknown as ClientLoginRequest;
  const namespace = request.metadata.namespace ?? '';
  const name = request.metadata.name ?? '';
  const uid = request.metadata.uid ?? '';
  const nowMs = ctx.now();
  // desired
  let plan = planLogin(request, deps.settings, nowMs, deps.stampKey);
  // A decision this process wrote that the cache does not show yet: wait for it instead of deciding again.
  if (plan.action !== 'collect' && plan.action !== 'wait' && deps.decided.has(uid)) plan = { action: 'wait', requeueAfterMs: 1_000 };
  const log = ctx.log.child({ component: 'login', request: `${namespace}/${name}` });
  // apply
  switch (plan.action) {
    case 'collect': {
      await ctx.client.delete(loginRequestResource, namespace, name, { uid });
      deps.decided.delete(uid);
      deps.onOutcome?.('collected');
      log.debug({ why: plan.why }, 'login request collected');
      return {};
    }
    case 'wait':
      return { requeueAfterMs: plan.requeueAfterMs };
    case 'refuse': {
      await applyStatusIfChanged(ctx.client, loginRequestResource, { namespace, name }, request.status, refusedStatus(request, plan.reason, plan.message, nowMs) ?? {});
      deps.decided.set(uid, nowMs);
      deps.onOutcome?.(plan.reason === LoginReason.Denied ? 'denied' : 'invalid');
      log.warn({ reason: plan.reason, user: request.spec?.username }, 'login request refused');
      // Denied means the webhook was bypassed: worth an Event an admin sees in `kubectl get events`.
      void ctx.events.record(cached, 'Warning', plan.reason, plan.message);
      return { requeueAfterMs: deps.settings.retainAfterDoneMs };
    }
    case 'sign': {
      const { grant } = plan;
      const rate = deps.rateLimiter.take(grant.sub, nowMs);
      if (!rate.allowed) {
        const retryS = Math.ceil(rate.retryAfterMs / 1000);
        const message = `${grant.sub} asked for more than ${deps.settings.rateLimitPerMinute} tokens a minute; create a new request in ${retryS} s`;
        await applyStatusIfChanged(ctx.client, loginRequestResource, { namespace, name }, request.status, refusedStatus(request, LoginReason.RateLimited, message, nowMs) ?? {});
        deps.decided.set(uid, nowMs);
        deps.onOutcome?.('rate_limited');
        log.warn({ user: grant.sub, retryAfterSeconds: retryS }, 'login request rate limited');
        return { requeueAfterMs: deps.settings.retainAfterDoneMs };
      }
      const jti = randomUUID();
      const token = await signToken(ctx.signingKey.privateKeyPem, {
        typ: 'client',
        sub: grant.sub,
        groups: grant.groups,
        ttlSeconds: grant.ttlSeconds,
        nowMs,
        jti,
        cnf: { jkt: grant.jkt },
      });
      const expiresAtMs = (Math.floor(nowMs / 1000) + grant.ttlSeconds) * 1000;
      await applyStatusIfChanged(ctx.client, loginRequestResource, { namespace, name }, request.status, issuedStatus(request, token, expiresAtMs, nowMs) ?? {});
      deps.decided.set(uid, nowMs);
      deps.onOutcome?.('issued');
      log.info({ user: grant.sub, groups: grant.groups.length, jti, expiresAt: rfc3339(expiresAtMs) }, 'client token issued');
      return { requeueAfterMs: deps.settings.retainAfterDoneMs };
    }
  }
}
