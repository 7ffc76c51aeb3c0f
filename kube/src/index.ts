export { type KubeClient, type KubeObject, type ListOptions, type ObjectMeta, Resources, type ResourceType, RestKubeClient, type WatchEventType, type WatchOptions } from './client.ts';
export { KubeError, KubeErrorCode } from './errors.ts';
export { podNamespace, SERVICE_ACCOUNT_NAMESPACE_FILE } from './in-cluster.ts';
export { Informer, type InformerEvent, type InformerLogger, type InformerOptions, objectKey } from './informer.ts';
export { LeaderElector, type LeaderElectionOptions } from './leader-election.ts';
export { WorkQueue, type WorkQueueOptions } from './workqueue.ts';
