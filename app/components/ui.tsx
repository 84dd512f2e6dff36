import { useEffect, useId, useState, type ReactNode } from "react";
import { errorMessage } from "../lib/errors";
import type { SessionStatus } from "../lib/types";

/** Building blocks shared by the dashboard pages: states, badges, forms, pagination. */

export function PageHeader({ title, description, actions }: { title: ReactNode; description?: ReactNode; actions?: ReactNode }) {
  return (
    <header className="page-header">
      <div className="page-header-text">
        <h1>{title}</h1>
        {description ? <p className="muted">{description}</p> : null}
      </div>
      {actions ? <div className="page-header-actions">{actions}</div> : null}
    </header>
  );
}

export function Loading({ label = "Loading…", rows = 3 }: { label?: string; rows?: number }) {
  return (
    <div className="loading" role="status" aria-live="polite" aria-busy="true">
      <span className="visually-hidden">{label}</span>
      {Array.from({ length: rows }, (_, index) => (
        <div key={index} className="skeleton-row" aria-hidden="true" />
      ))}
    </div>
  );
}

export function ErrorState({ error, onRetry, title = "Could not load this" }: { error: unknown; onRetry?: () => void; title?: string }) {
  return (
    <div className="state state-error" role="alert">
      <strong>{title}</strong>
      <p>{errorMessage(error)}</p>
      {onRetry ? (
        <button type="button" className="button" onClick={onRetry}>
          Try again
        </button>
      ) : null}
    </div>
  );
}

export function Empty({ title, children }: { title: string; children?: ReactNode }) {
  return (
    <div className="state state-empty">
      <strong>{title}</strong>
      {children ? <div className="muted">{children}</div> : null}
    </div>
  );
}

export function Notice({ kind, children }: { kind: "error" | "success" | "info" | "warning"; children: ReactNode }) {
  return (
    <div className={`notice notice-${kind}`} role={kind === "error" ? "alert" : "status"}>
      {children}
    </div>
  );
}

/** A background refresh failed: the page keeps what it showed and says so. */
export function StaleNotice({ error }: { error: unknown }) {
  return <Notice kind="warning">Could not refresh; showing what was loaded before. {errorMessage(error)}</Notice>;
}

/** A mutation's error, shown next to the form that caused it. */
export function MutationError({ error }: { error: unknown }) {
  if (!error) return null;
  return <Notice kind="error">{errorMessage(error)}</Notice>;
}

const STATUS_TONE: Record<SessionStatus, string> = {
  pending: "neutral",
  provisioning: "info",
  ready: "ok",
  running: "active",
  idle: "ok",
  suspended: "neutral",
  reconnecting: "warn",
  failed: "danger",
  terminated: "muted",
};

export function StatusBadge({ status }: { status: SessionStatus }) {
  return (
    <span className={`badge badge-${STATUS_TONE[status] ?? "neutral"}`} data-status={status}>
      <span className="badge-dot" aria-hidden="true" />
      {status}
    </span>
  );
}

export function Badge({ tone = "neutral", children, title }: { tone?: string; children: ReactNode; title?: string }) {
  return (
    <span className={`badge badge-${tone}`} title={title}>
      {children}
    </span>
  );
}

export function Field({
  label,
  hint,
  error,
  children,
  id,
  className,
}: {
  label: string;
  hint?: ReactNode;
  error?: string;
  children: (props: { id: string; "aria-describedby"?: string; "aria-invalid"?: boolean }) => ReactNode;
  id?: string;
  className?: string;
}) {
  const generated = useId();
  const fieldId = id ?? generated;
  const hintId = `${fieldId}-hint`;
  const errorId = `${fieldId}-error`;
  const describedBy = [hint ? hintId : null, error ? errorId : null].filter(Boolean).join(" ") || undefined;
  return (
    <div className={`field ${className ?? ""}`}>
      <label htmlFor={fieldId}>{label}</label>
      {children({ id: fieldId, "aria-describedby": describedBy, "aria-invalid": error ? true : undefined })}
      {hint ? (
        <small id={hintId} className="muted">
          {hint}
        </small>
      ) : null}
      {error ? (
        <small id={errorId} className="field-error">
          {error}
        </small>
      ) : null}
    </div>
  );
}

/** Two steps, no modal: the first press arms it, the second (within 5 s) confirms. */
export function ConfirmButton({
  label,
  confirmLabel,
  onConfirm,
  disabled,
  pending,
  className = "button button-danger",
}: {
  label: string;
  confirmLabel?: string;
  onConfirm: () => void;
  disabled?: boolean;
  pending?: boolean;
  className?: string;
}) {
  const [armed, setArmed] = useState(false);
  useEffect(() => {
    if (!armed) return;
    const timer = setTimeout(() => setArmed(false), 5_000);
    return () => clearTimeout(timer);
  }, [armed]);
  return (
    <button
      type="button"
      className={`${className}${armed ? " armed" : ""}`}
      disabled={disabled || pending}
      aria-live="polite"
      onClick={() => {
        if (armed) {
          setArmed(false);
          onConfirm();
        } else setArmed(true);
      }}
    >
      {pending ? `${label}…` : armed ? (confirmLabel ?? `Confirm: ${label.toLowerCase()}`) : label}
    </button>
  );
}

export function CopyButton({ text, label = "Copy" }: { text: string; label?: string }) {
  const [copied, setCopied] = useState(false);
  return (
    <button
      type="button"
      className="button"
      onClick={() => {
        void navigator.clipboard?.writeText(text).then(() => {
          setCopied(true);
          setTimeout(() => setCopied(false), 2_000);
        });
      }}
    >
      {copied ? "Copied" : label}
    </button>
  );
}

/** Keyset pagination over `{ items, nextCursor }`: a stack of the cursors that led to each page. */
export function useCursorPager(resetKey: string) {
  const [state, setState] = useState<{ key: string; stack: Array<string | undefined> }>({ key: resetKey, stack: [undefined] });
  // A change of filters starts again from the first page.
  const stack = state.key === resetKey ? state.stack : [undefined];
  const update = (change: (stack: Array<string | undefined>) => Array<string | undefined>) =>
    setState((current) => ({ key: resetKey, stack: change(current.key === resetKey ? current.stack : [undefined]) }));
  return {
    cursor: stack[stack.length - 1],
    page: stack.length,
    hasPrevious: stack.length > 1,
    next: (nextCursor: string) => update((current) => [...current, nextCursor]),
    previous: () => update((current) => (current.length > 1 ? current.slice(0, -1) : current)),
    first: () => update(() => [undefined]),
  };
}

export function Pager({
  page,
  hasPrevious,
  nextCursor,
  onPrevious,
  onNext,
  busy,
}: {
  page: number;
  hasPrevious: boolean;
  nextCursor: string | null | undefined;
  onPrevious: () => void;
  onNext: (cursor: string) => void;
  busy?: boolean;
}) {
  if (!hasPrevious && !nextCursor) return null;
  return (
    <nav className="pager" aria-label="Pages">
      <button type="button" className="button" disabled={!hasPrevious || busy} onClick={onPrevious}>
        ← Newer
      </button>
      <span className="muted">Page {page}</span>
      <button type="button" className="button" disabled={!nextCursor || busy} onClick={() => nextCursor && onNext(nextCursor)}>
        Older →
      </button>
    </nav>
  );
}

const COLLAPSE_LINES = 16;
const COLLAPSE_CHARS = 2_000;

/** Monospace output; long output starts collapsed to its first lines, with a button to show all. */
export function OutputBlock({ text, tone, label = "output" }: { text: string; tone?: "error"; label?: string }) {
  const lines = (text.endsWith("\n") ? text.slice(0, -1) : text).split("\n");
  const long = lines.length > COLLAPSE_LINES || text.length > COLLAPSE_CHARS;
  const [expanded, setExpanded] = useState(false);
  const shown = long && !expanded ? lines.slice(0, COLLAPSE_LINES).join("\n").slice(0, COLLAPSE_CHARS) : text;
  return (
    <div className={`output${tone === "error" ? " output-error" : ""}`}>
      <pre className={long && !expanded ? "collapsed" : undefined}>{shown.length > 0 ? shown : <span className="muted">(no {label})</span>}</pre>
      {long ? (
        <button type="button" className="button button-small output-toggle" aria-expanded={expanded} onClick={() => setExpanded((value) => !value)}>
          {expanded ? "Collapse" : `Show all ${lines.length.toLocaleString("en")} lines (${text.length.toLocaleString("en")} characters)`}
        </button>
      ) : null}
    </div>
  );
}

/** A <dl> row. */
export function Detail({ label, children }: { label: string; children: ReactNode }) {
  return (
    <div className="detail">
      <dt>{label}</dt>
      <dd>{children}</dd>
    </div>
  );
}
