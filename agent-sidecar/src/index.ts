export { Agent, type AgentOptions } from './agent.ts';
export { AgentError, AgentErrorCode } from './errors.ts';
export { AllowList, type ExposeEntry, parseExpose, parseExposeList } from './expose.ts';
