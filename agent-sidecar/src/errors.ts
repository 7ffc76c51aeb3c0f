/** Public error codes of the agent. Listed in docs/errors.md. */
import { NarrowlinkError } from '@narrowlink/protocol';

export const AgentErrorCode = {
  USAGE: 'NL_ERR_AGENT_USAGE',
  BAD_EXPOSE: 'NL_ERR_AGENT_BAD_EXPOSE',
  PID_FILE: 'NL_ERR_AGENT_PID_FILE',
  /** The CA file (NARROWLINK_CA_FILE) does not exist yet: logged while the agent waits for it (not fatal). */
  CA_FILE_MISSING: 'NL_ERR_AGENT_CA_FILE_MISSING',
} as const;
export type AgentErrorCode = (typeof AgentErrorCode)[keyof typeof AgentErrorCode];

export class AgentError extends NarrowlinkError {}
