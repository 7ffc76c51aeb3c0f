/**
 * Assembles an apiextensions.k8s.io/v1 CustomResourceDefinition from a spec and status schema. One version,
 * stored and served, with the status subresource (so spec writers cannot touch status and `generation` only
 * moves on spec changes, which is what `observedGeneration` compares against).
 */
import { LABEL_PART_OF, PART_OF } from '../labels.ts';
import { CATEGORY, GROUP, typeMetaProperties, VERSION } from './common.ts';
import type { JSONSchemaProps } from './schema.ts';

/** An additional printer column of `kubectl get`. */
export interface PrinterColumn {
  name: string;
  type: 'string' | 'integer' | 'number' | 'boolean' | 'date';
  jsonPath: string;
  description: string;
  /** 0 (default) shows in `kubectl get`, higher only with `-o wide`. */
  priority?: number;
}

/** The CustomResourceDefinition wire shape the generator writes (only the fields it uses). */
export interface CustomResourceDefinition {
  apiVersion: 'apiextensions.k8s.io/v1';
  kind: 'CustomResourceDefinition';
  metadata: { name: string; labels: Record<string, string> };
  spec: {
    group: string;
    names: {
      kind: string;
      listKind: string;
      plural: string;
      singular: string;
      shortNames: string[];
      categories: string[];
    };
    scope: 'Namespaced';
    versions: Array<{
      name: string;
      served: true;
      storage: true;
      schema: { openAPIV3Schema: JSONSchemaProps };
      subresources: { status: Record<string, never> };
      additionalPrinterColumns: PrinterColumn[];
    }>;
  };
}

/** Inputs of {@link buildCrd}. */
export interface CrdDefinition {
  kind: string;
  plural: string;
  singular: string;
  shortNames: string[];
  /** Top-level description: the first thing `kubectl explain <kind>` prints. */
  description: string;
  spec: JSONSchemaProps;
  status: JSONSchemaProps;
  printerColumns: PrinterColumn[];
}

/** Builds the CRD object. Pure; key order is fixed so the YAML is byte-stable. */
export function buildCrd(def: CrdDefinition): CustomResourceDefinition {
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name: `${def.plural}.${GROUP}`, labels: { [LABEL_PART_OF]: PART_OF } },
    spec: {
      group: GROUP,
      names: {
        kind: def.kind,
        listKind: `${def.kind}List`,
        plural: def.plural,
        singular: def.singular,
        shortNames: def.shortNames,
        categories: [CATEGORY],
      },
      scope: 'Namespaced',
      versions: [
        {
          name: VERSION,
          served: true,
          storage: true,
          schema: {
            openAPIV3Schema: {
              type: 'object',
              description: def.description,
              required: ['spec'],
              properties: {
                ...structuredClone(typeMetaProperties),
                spec: def.spec,
                status: def.status,
              } as Record<string, JSONSchemaProps>,
            },
          },
          subresources: { status: {} },
          additionalPrinterColumns: def.printerColumns,
        },
      ],
    },
  };
}
