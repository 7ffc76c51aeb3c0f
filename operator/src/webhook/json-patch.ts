/**
 * RFC 6902 JSON Patch, the subset the webhook emits (`add`, `replace`, `remove`, `test`), with RFC 6901
 * pointer escaping. {@link applyJsonPatch} lets the tests (and anyone debugging) apply a patch exactly as the
 * API server does, so idempotency is checked on the patched object, not on the patch text.
 */

/** One RFC 6902 operation. */
export interface JsonPatchOp {
  op: 'add' | 'replace' | 'remove' | 'test';
  /** RFC 6901 JSON pointer; `-` as the last token appends to an array. */
  path: string;
  value?: unknown;
}

/** One reference token of a JSON pointer: `~` → `~0`, then `/` → `~1` (RFC 6901 §3). */
export function escapePointerToken(token: string): string {
  return token.replaceAll('~', '~0').replaceAll('/', '~1');
}

/** A JSON pointer from unescaped tokens: `['metadata', 'annotations', 'a/b']` → `/metadata/annotations/a~1b`. */
export function pointer(...tokens: string[]): string {
  return tokens.map((t) => `/${escapePointerToken(t)}`).join('');
}

function unescapeToken(token: string): string {
  return token.replaceAll('~1', '/').replaceAll('~0', '~');
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Applies `patch` to a deep copy of `doc` and returns it; throws Error (with the op index) when an operation
 * cannot apply, as the API server would reject the webhook's patch.
 */
export function applyJsonPatch<T>(doc: T, patch: readonly JsonPatchOp[]): T {
  let root: unknown = structuredClone(doc);
  patch.forEach((op, index) => {
    const fail = (why: string): never => {
      throw new Error(`JSON patch op ${index} (${op.op} ${op.path}): ${why}`);
    };
    if (op.path === '') {
      if (op.op === 'test') {
        if (JSON.stringify(root) !== JSON.stringify(op.value)) fail('test failed');
        return;
      }
      if (op.op === 'remove') fail('cannot remove the root');
      root = structuredClone(op.value);
      return;
    }
    if (!op.path.startsWith('/')) fail('pointer must start with "/"');
    const tokens = op.path.slice(1).split('/').map(unescapeToken);
    const last = tokens.pop() as string;
    let parent: unknown = root;
    for (const token of tokens) {
      if (Array.isArray(parent)) parent = parent[Number(token)];
      else if (isObject(parent)) parent = parent[token];
      else fail(`no container at ${token}`);
      if (parent === undefined) fail(`path does not exist at ${token}`);
    }
    if (Array.isArray(parent)) {
      const i = last === '-' ? parent.length : Number(last);
      if (!Number.isInteger(i) || i < 0 || i > parent.length || (op.op !== 'add' && i >= parent.length)) fail('bad array index');
      if (op.op === 'add') parent.splice(i, 0, structuredClone(op.value));
      else if (op.op === 'replace') parent[i] = structuredClone(op.value);
      else if (op.op === 'remove') parent.splice(i, 1);
      else if (JSON.stringify(parent[i]) !== JSON.stringify(op.value)) fail('test failed');
    } else if (isObject(parent)) {
      const exists = Object.hasOwn(parent, last);
      if (op.op !== 'add' && !exists) fail('member does not exist');
      if (op.op === 'add' || op.op === 'replace') parent[last] = structuredClone(op.value);
      else if (op.op === 'remove') delete parent[last];
      else if (JSON.stringify(parent[last]) !== JSON.stringify(op.value)) fail('test failed');
    } else fail('parent is not an object or array');
  });
  return root as T;
}
