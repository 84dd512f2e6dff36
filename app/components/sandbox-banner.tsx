import { Fragment } from "react";
import type { RouterOutputs } from "../lib/types";

type SandboxAvailability = RouterOutputs["system"]["sandboxes"];

/** The server's `commands` are in backticks: shown as code, so they can be copied as they are. */
function WithCode({ text }: { text: string }) {
  return (
    <>
      {text.split("`").map((part, index) => (index % 2 === 1 ? <code key={index}>{part}</code> : <Fragment key={index}>{part}</Fragment>))}
    </>
  );
}

/**
 * On every dashboard page and the home page while this host cannot start sandboxes: what is wrong
 * and what to run. Berth serves everything else meanwhile, so the banner is all that says why
 * sessions cannot start.
 */
export function SandboxesUnavailable({ sandboxes, className }: { sandboxes: SandboxAvailability | undefined; className?: string }) {
  if (!sandboxes || sandboxes.available) return null;
  return (
    <section className={`sandbox-banner ${className ?? ""}`.trim()} role="alert" aria-labelledby="sandbox-banner-title" data-testid="sandboxes-unavailable">
      <strong id="sandbox-banner-title">Sandboxes are unavailable: sessions cannot start.</strong>
      <dl className="sandbox-banner-facts">
        <dt>Why</dt>
        <dd>
          <WithCode text={sandboxes.reason} />.
        </dd>
        <dt>Fix</dt>
        <dd>
          <WithCode text={sandboxes.fix} />
        </dd>
      </dl>
      <p className="small">Everything else (agents, secrets, members, API keys, jobs) works meanwhile.</p>
    </section>
  );
}
