/**
 * Pieces shared by both CRDs: API group and version, validation patterns, the standard condition and label
 * selector schemas, and the object metadata type the reconcilers read.
 *
 * Patterns are RE2 (the apiserver is Go): no look-around, no back-references.
 */
import { array, dateTime, type Field, integer, object, optional, string, stringEnum, stringMap } from './schema.ts';

/** API group of every Narrowlink custom resource. */
export const GROUP = 'narrowlink.io';
/** The one served and stored version. */
export const VERSION = 'v1alpha1';
/** `apiVersion` of Narrowlink custom resources. */
export const API_VERSION = `${GROUP}/${VERSION}`;
/** `kubectl get narrowlink` lists every Narrowlink resource. */
export const CATEGORY = 'narrowlink';

/** DNS-1123 label: lowercase alphanumerics and '-', alphanumeric at both ends (max 63, checked separately). */
export const DNS1123_LABEL_PATTERN = '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$';
/** DNS-1123 subdomain: dot-separated DNS-1123 labels (max 253, checked separately). */
export const DNS1123_SUBDOMAIN_PATTERN = '^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$';
/**
 * A fully qualified domain to publish: at least two DNS-1123 labels, lowercase, no wildcard (one Certificate
 * names exactly the domain the gateway routes on).
 */
export const DOMAIN_PATTERN = '^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+$';
/**
 * IANA service name as Kubernetes validates container port names: lowercase alphanumerics and single '-'
 * between them, at least one letter (max 15, checked separately). Written without look-ahead: leading
 * all-digit segments, then a segment holding the first letter, then any segments.
 */
export const PORT_NAME_PATTERN = '^([0-9]+-)*[0-9]*[a-z][a-z0-9]*(-[a-z0-9]+)*$';
/** A port number or an inclusive range `lo-hi` written as a string ("8080" or "8000-8100"). */
export const PORT_STRING_PATTERN = '^[1-9][0-9]{0,4}(-[1-9][0-9]{0,4})?$';
/** Condition type: optional DNS-subdomain prefix and '/', then a CamelCase-ish name (metav1.Condition). */
export const CONDITION_TYPE_PATTERN =
  '^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$';
/** Condition reason: CamelCase identifier (metav1.Condition). */
export const CONDITION_REASON_PATTERN = '^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$';

/** Highest TCP/UDP port number. */
export const MAX_PORT = 65535;

/** Standard metav1.Condition. */
export interface Condition {
  type: string;
  status: 'True' | 'False' | 'Unknown';
  observedGeneration?: number;
  lastTransitionTime: string;
  reason: string;
  message: string;
}

/** The metav1.Condition schema, as upstream types generate it, with descriptions for `kubectl explain`. */
export const conditionSchema = object('Condition describes one aspect of the current state of this object.', {
  type: string('Type of the condition in CamelCase, for example Ready.', {
    pattern: CONDITION_TYPE_PATTERN,
    maxLength: 316,
  }),
  status: stringEnum('Status of the condition: True, False or Unknown.', ['True', 'False', 'Unknown']),
  observedGeneration: optional(
    integer(
      'The .metadata.generation this condition was computed from; older than the current generation means the condition is stale.',
      { minimum: 0, format: 'int64' },
    ),
  ),
  lastTransitionTime: dateTime('Last time the condition changed from one status to another.'),
  reason: string('Programmatic identifier in CamelCase for the last transition, stable across releases.', {
    pattern: CONDITION_REASON_PATTERN,
    minLength: 1,
    maxLength: 1024,
  }),
  message: string('Human readable details about the last transition; may be empty.', { maxLength: 32768 }),
}) satisfies Field<Condition>;

/** The `conditions` list of a status: one entry per type (a list-map keyed by type, as upstream does). */
export const conditionsField = array(
  'Current state of this object as standard conditions, one per type.',
  conditionSchema,
  { listType: 'map', listMapKeys: ['type'], maxItems: 16 },
);

/** `status.observedGeneration`. */
export const observedGenerationField = integer(
  'The .metadata.generation the operator last reconciled; status is current when it equals .metadata.generation.',
  { minimum: 0, format: 'int64' },
);

/** Label key or value in a selector: the apiserver validates labels themselves, so only a sane length here. */
const selectorString = (description: string) => string(description, { minLength: 1, maxLength: 317 });

/** Kubernetes LabelSelector (matchLabels and matchExpressions, ANDed; empty selects everything). */
export const labelSelectorSchema = object(
  'Label selector over NarrowlinkAgent metadata labels. All terms are ANDed; an empty selector matches every agent.',
  {
    matchLabels: optional(
      stringMap(
        'Label key/value pairs that must all be present on the agent.',
        string('Required value of the label.', { maxLength: 63 }),
      ),
    ),
    matchExpressions: optional(
      array(
        'Label requirements that must all hold.',
        object('A label requirement: a key, an operator and values.', {
          key: selectorString('Label key the requirement applies to.'),
          operator: stringEnum(
            'How the label value relates to values: In, NotIn, Exists or DoesNotExist.',
            ['In', 'NotIn', 'Exists', 'DoesNotExist'] as const,
          ),
          values: optional(
            array(
              'Label values; non-empty for In and NotIn, empty for Exists and DoesNotExist.',
              string('A label value.', { maxLength: 63 }),
              { maxItems: 64 },
            ),
          ),
        }),
        { maxItems: 32 },
      ),
    ),
  },
);

/**
 * The object metadata the reconcilers read, as the API returns it in JSON (timestamps are RFC 3339 strings).
 * Only the fields Narrowlink uses; the apiserver always sets name, namespace, uid and generation.
 */
export interface ObjectMeta {
  name?: string;
  namespace?: string;
  uid?: string;
  generation?: number;
  resourceVersion?: string;
  creationTimestamp?: string;
  deletionTimestamp?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  finalizers?: string[];
  ownerReferences?: OwnerReference[];
}

/** metav1.OwnerReference. */
export interface OwnerReference {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
  controller?: boolean;
  blockOwnerDeletion?: boolean;
}

/** Top-level `apiVersion` / `kind` / `metadata` schema entries every CRD carries. */
export const typeMetaProperties = {
  apiVersion: {
    type: 'string',
    description:
      'APIVersion defines the versioned schema of this representation of an object. Servers convert recognized schemas to the latest internal value, and may reject unrecognized values.',
  },
  kind: {
    type: 'string',
    description:
      'Kind is a string value representing the REST resource this object represents. In CamelCase; cannot be updated.',
  },
  // Kubernetes 1.20 refuses a CRD whose root metadata schema sets anything but type (a description too:
  // "must not specify anything other than name and generateName").
  metadata: { type: 'object' },
} as const;
