/**
 * Recurring jobs, in graphile-worker's crontab format. `?fill` back-fills missed runs after downtime;
 * `jobKey` keeps at most one pending instance when several replicas schedule the same item.
 */
export const crontab = [
  "* * * * * maintenance:release-dead-worker-locks ?jobKey=release-dead-worker-locks&jobKeyMode=replace&max=1",
].join("\n");
