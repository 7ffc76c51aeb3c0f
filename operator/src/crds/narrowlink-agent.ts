/**
 * `NarrowlinkAgent` (narrowlink.io/v1alpha1, namespaced): one logical agent, i.e. a set of ports reachable
 * through Narrowlink, possibly served by several sidecar instances (a multi-replica Deployment is one agent).
 * Policies select agents by name or by metadata labels.
 */
import {
  type API_VERSION,
  conditionsField,
  DNS1123_SUBDOMAIN_PATTERN,
  DOMAIN_PATTERN,
  MAX_PORT,
  type ObjectMeta,
  observedGenerationField,
  PORT_NAME_PATTERN,
} from './common.ts';
import { buildCrd } from './crd.ts';
import {
  array,
  boolean,
  type Infer,
  integer,
  object,
  optional,
  string,
  stringEnum,
  withDefault,
} from './schema.ts';

/** `kind` of the resource. */
export const AGENT_KIND = 'NarrowlinkAgent';
/** Default `spec.expose[].host`: the pod's own loopback (the sidecar shares the pod network namespace). */
export const DEFAULT_EXPOSE_HOST = '127.0.0.1';
/** Default `spec.mode`. */
export const DEFAULT_AGENT_MODE = 'auto';
/** Default `spec.publish[].tls`. */
export const DEFAULT_PUBLISH_TLS = 'Terminate';
/** Default `spec.issuerRef.kind` (as cert-manager defaults it). */
export const DEFAULT_ISSUER_KIND = 'Issuer';
/** Default `spec.issuerRef.group`. */
export const DEFAULT_ISSUER_GROUP = 'cert-manager.io';

/** Condition types on `status.conditions` of an agent. */
export const AgentConditionType = {
  /** The agent is in the gateway config and its outputs (token, Certificates) exist. */
  Ready: 'Ready',
  /** At least one instance is attached to a gateway. */
  Connected: 'Connected',
  /** Every Certificate of a `Terminate` publish entry is Ready. */
  CertificatesReady: 'CertificatesReady',
} as const;
export type AgentConditionType = (typeof AgentConditionType)[keyof typeof AgentConditionType];

const portNumber = (description: string) => integer(description, { minimum: 1, maximum: MAX_PORT, format: 'int32' });

const exposeEntry = object('A port the agent serves, named so clients and policies can refer to it.', {
  name: string(
    'Port name, unique within the agent: IANA service name rules (lowercase letters, digits and single "-", at least one letter, at most 15 characters), as for container ports.',
    { pattern: PORT_NAME_PATTERN, minLength: 1, maxLength: 15 },
  ),
  port: portNumber('TCP port the agent dials on host, 1-65535.'),
  host: withDefault(
    string(
      'Host the agent dials for this port, as seen from the agent (an IP or DNS name). Default 127.0.0.1: the pod itself.',
      { pattern: '^\\S+$', minLength: 1, maxLength: 253 },
    ),
    DEFAULT_EXPOSE_HOST,
  ),
});

const publishEntry = object('A public domain routed by the gateway to one exposed port of this agent.', {
  domain: string(
    'Fully qualified domain name the gateway routes to this agent (lowercase, at least two labels, no wildcard). A domain belongs to the agent that claimed it first.',
    { pattern: DOMAIN_PATTERN, minLength: 1, maxLength: 253 },
  ),
  port: portNumber('Port the traffic goes to; must be the port of one of spec.expose.'),
  tls: withDefault(
    stringEnum(
      'Terminate: the gateway terminates TLS with a cert-manager Certificate for the domain. Passthrough: the gateway routes by SNI and the service terminates TLS itself; no Certificate is made.',
      ['Terminate', 'Passthrough'],
    ),
    DEFAULT_PUBLISH_TLS,
  ),
});

const issuerRef = object(
  'cert-manager issuer for the Certificates of spec.publish. Default: the ClusterIssuer configured in the chart.',
  {
    name: string('Name of the Issuer or ClusterIssuer.', {
      pattern: DNS1123_SUBDOMAIN_PATTERN,
      minLength: 1,
      maxLength: 253,
    }),
    kind: withDefault(
      stringEnum('Issuer (in the agent namespace) or ClusterIssuer. Default Issuer.', ['Issuer', 'ClusterIssuer']),
      DEFAULT_ISSUER_KIND,
    ),
    group: withDefault(
      string('API group of the issuer. Default cert-manager.io.', {
        pattern: DNS1123_SUBDOMAIN_PATTERN,
        minLength: 1,
        maxLength: 253,
      }),
      DEFAULT_ISSUER_GROUP,
    ),
  },
);

/** Schema of `spec`. */
export const agentSpecField = object('Desired state of the agent: what it exposes and how it is reached.', {
  expose: withDefault(
    array('Ports this agent serves. Only these host:port targets can be reached through it.', exposeEntry, {
      listType: 'map',
      listMapKeys: ['name'],
      maxItems: 64,
    }),
    [],
  ),
  publish: optional(
    array('Public domains routed by the gateway to this agent.', publishEntry, {
      listType: 'map',
      listMapKeys: ['domain'],
      maxItems: 32,
    }),
  ),
  mode: withDefault(
    stringEnum(
      'Data paths the agent offers: auto (relay at once, direct when a peer-to-peer path is up), direct (peer-to-peer only), relay (through the gateway only). Default auto.',
      ['auto', 'direct', 'relay'],
    ),
    DEFAULT_AGENT_MODE,
  ),
  issuerRef: optional(issuerRef),
  serviceAccounts: optional(
    array(
      'ServiceAccounts (in this namespace) whose projected tokens with audience "narrowlink" may attach as this agent; the gateway checks them with a TokenReview. The operator fills this for workloads with injected sidecars.',
      string('Name of a ServiceAccount in the agent\'s namespace.', { pattern: DNS1123_SUBDOMAIN_PATTERN, maxLength: 253 }),
      { listType: 'set', maxItems: 64 },
    ),
  ),
  external: withDefault(
    boolean(
      'True when the agent runs outside the cluster: the operator then creates a token Secret (status.tokenSecretName) to start it with. In-cluster sidecars authenticate with their ServiceAccount token instead. Default false.',
    ),
    false,
  ),
});

/** Schema of `status`. */
export const agentStatusField = object('Observed state of the agent, written by the operator.', {
  conditions: optional(conditionsField),
  observedGeneration: optional(observedGenerationField),
  connectedInstances: optional(
    integer('Number of agent instances attached to a gateway right now.', { minimum: 0, format: 'int32' }),
  ),
  natType: optional(
    string('NAT behaviour last observed for this agent by the gateway probes (decides whether a direct path can work).', {
      maxLength: 64,
    }),
  ),
  directPaths: optional(
    integer('Direct (peer-to-peer) paths from clients to this agent that are up right now, over all gateway replicas.', {
      minimum: 0,
      format: 'int32',
    }),
  ),
  tokenSecretName: optional(
    string('Secret holding the agent token (key "token"); set only when spec.external is true.', { maxLength: 253 }),
  ),
});

/** `spec` of a NarrowlinkAgent. Defaulted fields are optional: code must apply the DEFAULT_* constants. */
export type NarrowlinkAgentSpec = Infer<typeof agentSpecField>;
/** `status` of a NarrowlinkAgent. */
export type NarrowlinkAgentStatus = Infer<typeof agentStatusField>;
/** One `spec.expose[]` entry. */
export type AgentExpose = NonNullable<NarrowlinkAgentSpec['expose']>[number];
/** One `spec.publish[]` entry. */
export type AgentPublish = NonNullable<NarrowlinkAgentSpec['publish']>[number];
/** `spec.issuerRef`. */
export type AgentIssuerRef = NonNullable<NarrowlinkAgentSpec['issuerRef']>;

/** A NarrowlinkAgent as read from the API. */
export interface NarrowlinkAgent {
  apiVersion: typeof API_VERSION;
  kind: typeof AGENT_KIND;
  metadata: ObjectMeta;
  spec: NarrowlinkAgentSpec;
  status?: NarrowlinkAgentStatus;
}

/** The NarrowlinkAgent CustomResourceDefinition. */
export const narrowlinkAgentCrd = buildCrd({
  kind: AGENT_KIND,
  plural: 'narrowlinkagents',
  singular: 'narrowlinkagent',
  shortNames: ['nla'],
  description:
    'NarrowlinkAgent is a set of ports reachable through Narrowlink, served by one or more agent instances (sidecars or external processes). AccessPolicies decide who may reach it.',
  spec: agentSpecField.schema,
  status: agentStatusField.schema,
  printerColumns: [
    {
      name: 'Ready',
      type: 'string',
      jsonPath: '.status.conditions[?(@.type=="Ready")].status',
      description: 'The agent is in the gateway config and its outputs exist.',
    },
    {
      name: 'Connected',
      type: 'string',
      jsonPath: '.status.conditions[?(@.type=="Connected")].status',
      description: 'At least one instance is attached to a gateway.',
    },
    {
      name: 'Instances',
      type: 'integer',
      jsonPath: '.status.connectedInstances',
      description: 'Attached agent instances.',
    },
    { name: 'NAT', type: 'string', jsonPath: '.status.natType', description: 'NAT behaviour last observed.' },
    { name: 'Direct', type: 'integer', jsonPath: '.status.directPaths', description: 'Direct paths up right now.' },
    { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp', description: 'Time since creation.' },
  ],
});
