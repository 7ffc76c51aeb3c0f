/**
 * `AccessPolicy` (narrowlink.io/v1alpha1, namespaced): who (subjects) may reach which agents, ports, hosts
 * and data paths. Default deny; a matching Deny rule wins over every Allow. A policy reaches only agents in
 * its own namespace unless the chart allows cross-namespace policies.
 */
import {
  type API_VERSION,
  conditionsField,
  DNS1123_LABEL_PATTERN,
  labelSelectorSchema,
  MAX_PORT,
  type ObjectMeta,
  observedGenerationField,
  PORT_STRING_PATTERN,
} from './common.ts';
import { buildCrd } from './crd.ts';
import { array, dateTime, type Infer, intOrString, object, optional, string, stringEnum } from './schema.ts';

/** `kind` of the resource. */
export const POLICY_KIND = 'AccessPolicy';

/** Condition types on `status.conditions` of a policy. */
export const PolicyConditionType = {
  /** The policy is valid, in the gateway config, and not expired. */
  Ready: 'Ready',
} as const;
export type PolicyConditionType = (typeof PolicyConditionType)[keyof typeof PolicyConditionType];

const subject = object(
  'Who the policy applies to: a user or group as the cluster authenticates them, or a ServiceAccount.',
  {
    kind: stringEnum('User, Group or ServiceAccount.', ['User', 'Group', 'ServiceAccount']),
    name: string('User name, group name, or ServiceAccount name.', { minLength: 1, maxLength: 253 }),
    namespace: optional(
      string('Namespace of the ServiceAccount (kind ServiceAccount only). Default: the policy namespace.', {
        pattern: DNS1123_LABEL_PATTERN,
        minLength: 1,
        maxLength: 63,
      }),
    ),
  },
  // namespace is only meaningful for ServiceAccounts: either the kind is ServiceAccount or namespace is unset.
  { anyOf: [{ properties: { kind: { enum: ['ServiceAccount'] } } }, { not: { required: ['namespace'] } }] },
);

const agentRef = object(
  'Agents the rule applies to, by name or by label selector (both: an agent must match both). Omit to match every agent the policy reaches.',
  {
    names: optional(
      array(
        'Agent names; "*" matches every agent.',
        string('A NarrowlinkAgent name, or "*".', { pattern: `^(\\*|${DNS1123_LABEL_PATTERN.slice(1, -1)})$`, maxLength: 63 }),
        { minItems: 1, maxItems: 64, listType: 'set' },
      ),
    ),
    selector: optional(labelSelectorSchema),
  },
  { anyOf: [{ required: ['names'] }, { required: ['selector'] }] },
);

const rule = object('One rule: an action and the conditions a stream must meet for it to apply.', {
  action: stringEnum('Allow or Deny. Any matching Deny wins over every Allow.', ['Allow', 'Deny']),
  agents: optional(agentRef),
  ports: optional(
    array(
      'Target ports: a number (8080) or an inclusive range string ("8000-8100"). Omit to match every exposed port.',
      intOrString('A port 1-65535, or a range "lo-hi" with lo <= hi.', {
        minimum: 1,
        maximum: MAX_PORT,
        pattern: PORT_STRING_PATTERN,
        maxLength: 11,
      }),
      { minItems: 1, maxItems: 64 },
    ),
  ),
  hosts: optional(
    array(
      'Target hosts as the agent dials them: an exact host, "*.suffix" (any subdomain of suffix) or "*". Omit to match every host.',
      string('A host name, IP, "*.suffix" or "*".', { pattern: '^(\\*|(\\*\\.)?[^*\\s]+)$', minLength: 1, maxLength: 253 }),
      { minItems: 1, maxItems: 64 },
    ),
  ),
  paths: optional(
    array(
      'Data paths the rule applies to: Direct (peer-to-peer) and/or Relay (through the gateway). Omit for both.',
      stringEnum('Direct or Relay.', ['Direct', 'Relay']),
      { minItems: 1, maxItems: 2, listType: 'set' },
    ),
  ),
});

/** Schema of `spec`. */
export const policySpecField = object('Desired state of the policy: subjects and rules.', {
  subjects: array('Who the policy applies to; any one matching subject is enough.', subject, {
    minItems: 1,
    maxItems: 64,
  }),
  rules: array('Rules evaluated for every stream a subject opens. Nothing matching means deny.', rule, {
    minItems: 1,
    maxItems: 64,
  }),
  expiresAt: optional(
    dateTime('After this instant (RFC 3339) the policy grants and denies nothing; gateways stop applying it at once.'),
  ),
});

/** Schema of `status`. */
export const policyStatusField = object('Observed state of the policy, written by the operator.', {
  conditions: optional(conditionsField),
  observedGeneration: optional(observedGenerationField),
});

/** `spec` of an AccessPolicy. */
export type AccessPolicySpec = Infer<typeof policySpecField>;
/** `status` of an AccessPolicy. */
export type AccessPolicyStatus = Infer<typeof policyStatusField>;
/** One `spec.subjects[]` entry. */
export type PolicySubject = AccessPolicySpec['subjects'][number];
/** One `spec.rules[]` entry. */
export type AccessPolicyRule = AccessPolicySpec['rules'][number];

/** An AccessPolicy as read from the API. */
export interface AccessPolicy {
  apiVersion: typeof API_VERSION;
  kind: typeof POLICY_KIND;
  metadata: ObjectMeta;
  spec: AccessPolicySpec;
  status?: AccessPolicyStatus;
}

/** The AccessPolicy CustomResourceDefinition. */
export const accessPolicyCrd = buildCrd({
  kind: POLICY_KIND,
  plural: 'accesspolicies',
  singular: 'accesspolicy',
  shortNames: ['nlap'],
  description:
    'AccessPolicy grants (or denies) users, groups and ServiceAccounts access to NarrowlinkAgents, their ports, hosts and data paths. Default deny; deny wins.',
  spec: policySpecField.schema,
  status: policyStatusField.schema,
  printerColumns: [
    {
      name: 'Subjects',
      type: 'string',
      jsonPath: '.spec.subjects[*].name',
      description: 'Subject names (Kubernetes before 1.22 shows only the first).',
    },
    {
      name: 'Rules',
      type: 'string',
      jsonPath: '.spec.rules[*].action',
      description: 'Rule actions in order (Kubernetes before 1.22 shows only the first).',
    },
    { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp', description: 'Time since creation.' },
  ],
});
