/** Public error codes of the agent. Listed in docs/errors.md. */
import { NarrowlinkError } from '@narrowlink/protocol';

export const AgentErrorCode = {
  USAGE: 'NL_ERR_AGENT_USAGE',
  BAD_EXPOSE: 'NL_ERR_AGENT_BAD_EXPOSE',
  PID_FILE: 'NL_ERR_AGENT_PID_FILE',
} as const;
export type AgentErrorCode = (typeof AgentErrorCode)[keyof typeof AgentErrorCode];

export class AgentError extends NarrowlinkError {}
