/**
 * Recurring jobs, in graphile-worker's crontab format. `jobKey` keeps at most one pending instance
 * when several replicas schedule the same item; `max=1` does not back-fill missed runs.
 */
export const crontab = [
  "* * * * * maintenance:release-dead-worker-locks ?jobKey=release-dead-worker-locks&jobKeyMode=replace&max=1",
  "* * * * * sandbox:suspend-idle ?jobKey=suspend-idle&jobKeyMode=replace&max=1",
  "* * * * * sandbox:reconcile ?jobKey=reconcile&jobKeyMode=replace&max=1",
  "* * * * * turn:queue-stranded ?jobKey=queue-stranded-turns&jobKeyMode=replace&max=1",
  "17 * * * * maintenance:prune-login-failures ?jobKey=prune-login-failures&jobKeyMode=replace&max=1",
].join("\n");
