import type { MetaFunction } from "@remix-run/node";
import { Link, useNavigate } from "@remix-run/react";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useEffect, useState, type FormEvent } from "react";
import { errorCode, errorMessage, fieldErrors } from "../lib/errors";
import { useHydrated } from "../lib/hooks";
import { useTRPC } from "../lib/trpc";

export const meta: MetaFunction = () => [{ title: "Invitation · Berth" }, { name: "referrer", content: "no-referrer" }];

/**
 * The invitation link, `/invite#<token>`. The token is in the fragment: the browser never sends it to
 * a server (no access log, no Referer holds it). A person with an account signs in and accepts on
 * their dashboard; anyone else chooses a password here, which creates the account and joins the team.
 */
export default function Invite() {
  const trpc = useTRPC();
  const queryClient = useQueryClient();
  const navigate = useNavigate();
  const hydrated = useHydrated();
  const [token, setToken] = useState<string | null>(null);
  const [name, setName] = useState("");
  const [password, setPassword] = useState("");
  const [repeated, setRepeated] = useState("");
  useEffect(() => setToken(window.location.hash.slice(1)), []);
  const preview = useQuery(trpc.invitations.preview.queryOptions({ token: token ?? "" }, { enabled: Boolean(token), retry: false }));
  const signUp = useMutation(
    trpc.invitations.signUp.mutationOptions({
      onSuccess: () => {
        queryClient.clear();
        navigate("/sessions", { replace: true });
      },
    }),
  );
  const errors = fieldErrors(signUp.error);
  const mismatch = repeated.length > 0 && repeated !== password;

  function submit(event: FormEvent) {
    event.preventDefault();
    if (!token || mismatch) return;
    signUp.mutate({ token, name: name.trim(), password });
  }

  let body;
  if (!hydrated || token === null || (token && preview.isPending)) {
    body = <p className="muted">Loading the invitation…</p>;
  } else if (!token || preview.isError) {
    const code = preview.isError ? errorCode(preview.error) : undefined;
    body = (
      <p className="notice notice-error" role="alert">
        {code === "NOT_FOUND" || code === "BAD_REQUEST" || !token
          ? "This invitation link is not valid: it may have been accepted, revoked, or replaced by a newer invitation. Ask the team for a new one."
          : errorMessage(preview.error)}
      </p>
    );
  } else {
    const invitation = preview.data!;
    const hasAccount = signUp.isError && errorCode(signUp.error) === "CONFLICT";
    body = (
      <>
        <p>
          <strong>{invitation.email}</strong> is invited to join <strong>{invitation.team.name}</strong> as <strong>{invitation.role}</strong>.
        </p>
        <p className="muted small">
          Have a Berth account with this email? <Link to="/login?next=%2Fsessions">Sign in</Link> and accept the invitation on your dashboard.
        </p>
        <h2 className="section-title">New to Berth? Choose a password</h2>
        <form method="post" onSubmit={submit} className="stack" noValidate>
          <div className="field">
            <label htmlFor="invite-name">Your name</label>
            <input id="invite-name" name="name" autoComplete="name" maxLength={200} value={name} onChange={(event) => setName(event.target.value)} />
          </div>
          <input type="hidden" name="email" autoComplete="username" value={invitation.email} />
          <div className="field">
            <label htmlFor="invite-password">Password</label>
            <input
              id="invite-password"
              name="password"
              type="password"
              autoComplete="new-password"
              required
              minLength={12}
              value={password}
              aria-describedby="invite-password-hint"
              onChange={(event) => setPassword(event.target.value)}
            />
            <span id="invite-password-hint" className={errors.password ? "field-error" : "muted small"}>
              {errors.password ? `Password ${errors.password}.` : "At least 12 characters."}
            </span>
          </div>
          <div className="field">
            <label htmlFor="invite-repeat">Password again</label>
            <input
              id="invite-repeat"
              name="repeat"
              type="password"
              autoComplete="new-password"
              required
              value={repeated}
              aria-invalid={mismatch}
              onChange={(event) => setRepeated(event.target.value)}
            />
            {mismatch ? <span className="field-error">The passwords differ.</span> : null}
          </div>
          <div aria-live="assertive">
            {signUp.isError && !errors.password ? (
              <p className="notice notice-error" role="alert">
                {hasAccount ? (
                  <>
                    This email has a Berth account already. <Link to="/login?next=%2Fsessions">Sign in</Link> and accept the invitation on your dashboard.
                  </>
                ) : (
                  errorMessage(signUp.error)
                )}
              </p>
            ) : null}
          </div>
          <button type="submit" className="button button-primary button-block" disabled={signUp.isPending || password.length < 12 || repeated !== password}>
            {signUp.isPending ? "Joining…" : `Create account and join ${invitation.team.name}`}
          </button>
        </form>
      </>
    );
  }

  return (
    <main className="login-page">
      <div className="login-card">
        <div className="brand brand-large">
          <span className="brand-mark" aria-hidden="true">
            ⚓
          </span>
          <span>Berth</span>
        </div>
        <h1>Invitation</h1>
        {body}
      </div>
    </main>
  );
}
