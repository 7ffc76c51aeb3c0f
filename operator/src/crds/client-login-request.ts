/**
 * `ClientLoginRequest` (narrowlink.io/v1alpha1, namespaced, short-lived): how `narrowlink login` turns a
 * Kubernetes identity into a Narrowlink client token without sending the user's credential anywhere but the API
 * server. The CLI creates one with its Ed25519 public key; the operator's admission webhook stamps
 * `spec.username`, `spec.uid` and `spec.groups` from the AdmissionReview's userInfo (what the API server
 * authenticated) and refuses client-supplied values and spec changes; the operator signs a token bound to the
 * key (`cnf.jkt`) into `status.token`. The CLI deletes the object once it has read the token; the operator
 * collects the ones a crashed CLI left behind. See docs/lifecycle/client-login.md.
 */
import type { ResourceType } from '@narrowlink/kube';
import { type API_VERSION, conditionsField, type ObjectMeta, observedGenerationField } from './common.ts';
import { buildCrd } from './crd.ts';
import { array, dateTime, type Infer, integer, object, optional, string } from './schema.ts';

/** `kind` of the resource. */
export const LOGIN_REQUEST_KIND = 'ClientLoginRequest';
/** Plural resource name (URL path segment, RBAC resource). */
export const LOGIN_REQUEST_PLURAL = 'clientloginrequests';

/**
 * A raw 32-byte Ed25519 public key in base64url without padding (the JWK `x`): 43 characters, the last one
 * carrying only 4 bits of key (its low 2 bits are zero), so exactly one string encodes each key.
 */
export const ED25519_X_PATTERN = '^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$';

/** Condition types on `status.conditions` of a login request. */
export const LoginConditionType = {
  /** True once `status.token` holds the issued token; False with the reason it never will. */
  Ready: 'Ready',
} as const;
export type LoginConditionType = (typeof LoginConditionType)[keyof typeof LoginConditionType];

/** Reasons of the `Ready` condition (the contract shared with the CLI). */
export const LoginReason = {
  /** The token is in `status.token`. */
  Issued: 'Issued',
  /** The request lacks the webhook's stamp (the webhook was bypassed or misconfigured): nothing is signed. */
  Denied: 'Denied',
  /** This user asked for too many tokens in a short time; create a new request later. */
  RateLimited: 'RateLimited',
  /** The spec cannot be used (public key not a 32-byte Ed25519 key, bad ttlSeconds). */
  Invalid: 'Invalid',
} as const;
export type LoginReason = (typeof LoginReason)[keyof typeof LoginReason];

/** Schema of `spec`. */
export const loginSpecField = object(
  'What the client asks for. publicKey and ttlSeconds come from the client; username, uid and groups are written by the admission webhook from the identity the API server authenticated, and a request that sets them itself is refused. The spec cannot be changed after creation.',
  {
    publicKey: string(
      'The Ed25519 public key the token is bound to: the raw 32-byte key in base64url without padding (the JWK "x" member). The client keeps the private key and proves possession of it to the gateway.',
      { pattern: ED25519_X_PATTERN, minLength: 43, maxLength: 43 },
    ),
    ttlSeconds: optional(
      integer('Requested token lifetime in seconds. The operator caps it (chart value login.tokenTtlSeconds, at most 24 h); default the cap.', {
        minimum: 60,
        format: 'int32',
      }),
    ),
    username: optional(
      string('Set by the admission webhook: the user name the API server authenticated for the creator of this request.', {
        maxLength: 4096,
      }),
    ),
    uid: optional(string('Set by the admission webhook: the uid of the authenticated user; absent when the authenticator gives none (client certificates).', { maxLength: 4096 })),
    groups: optional(
      array(
        'Set by the admission webhook: the groups the API server authenticated for the creator of this request.',
        string('A group name.', { maxLength: 4096 }),
        { maxItems: 1024 },
      ),
    ),
  },
);

/** Schema of `status`. */
export const loginStatusField = object('The outcome, written by the operator.', {
  token: optional(
    string(
      'The issued Narrowlink client token (a JWT bound to spec.publicKey: useless without the matching private key). Delete the request once it is read.',
      { maxLength: 65536 },
    ),
  ),
  expiresAt: optional(dateTime('When the token expires (RFC 3339).')),
  conditions: optional(conditionsField),
  observedGeneration: optional(observedGenerationField),
});

/** `spec` of a ClientLoginRequest. */
export type ClientLoginRequestSpec = Infer<typeof loginSpecField>;
/** `status` of a ClientLoginRequest. */
export type ClientLoginRequestStatus = Infer<typeof loginStatusField>;

/** A ClientLoginRequest as read from the API. */
export interface ClientLoginRequest {
  apiVersion: typeof API_VERSION;
  kind: typeof LOGIN_REQUEST_KIND;
  metadata: ObjectMeta;
  spec: ClientLoginRequestSpec;
  status?: ClientLoginRequestStatus;
}

/** The ClientLoginRequest CustomResourceDefinition. */
export const clientLoginRequestCrd = buildCrd({
  kind: LOGIN_REQUEST_KIND,
  plural: LOGIN_REQUEST_PLURAL,
  singular: 'clientloginrequest',
  shortNames: ['nllogin'],
  description:
    'ClientLoginRequest asks the operator for a Narrowlink client token for whoever creates it (narrowlink login). The admission webhook records the creator as the API server authenticated them; the operator signs a short-lived token bound to spec.publicKey into status.token. Short-lived: the client deletes it, the operator collects leftovers.',
  spec: loginSpecField.schema,
  status: loginStatusField.schema,
  printerColumns: [
    { name: 'User', type: 'string', jsonPath: '.spec.username', description: 'Who the API server authenticated as the creator.' },
    {
      name: 'Ready',
      type: 'string',
      jsonPath: '.status.conditions[?(@.type=="Ready")].status',
      description: 'True once the token is issued.',
    },
    {
      name: 'Reason',
      type: 'string',
      jsonPath: '.status.conditions[?(@.type=="Ready")].reason',
      description: 'Issued, Denied, RateLimited or Invalid.',
    },
    { name: 'Expires', type: 'string', jsonPath: '.status.expiresAt', description: 'When the issued token expires.', priority: 1 },
    { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp', description: 'Time since creation.' },
  ],
});

/** Where ClientLoginRequests live in the API (for the KubeClient and informers). */
export const loginRequestResource = {
  group: 'narrowlink.io',
  version: 'v1alpha1',
  plural: LOGIN_REQUEST_PLURAL,
  kind: LOGIN_REQUEST_KIND,
  namespaced: true,
} as const satisfies ResourceType;
