import type { LoaderFunctionArgs, MetaFunction } from "@remix-run/node";
import { redirect, useNavigate, useSearchParams } from "@remix-run/react";
import { useMutation, useQueryClient } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { errorCode, errorMessage } from "../lib/errors";
import { safeNextPath, useHydrated } from "../lib/hooks";
import { useTRPC } from "../lib/trpc";

export const meta: MetaFunction = () => [{ title: "Sign in · Berth" }];

export async function loader({ request, context }: LoaderFunctionArgs) {
  const signedIn = await context
    .trpcCaller(request)
    .auth.me()
    .then(() => true)
    .catch(() => false);
  if (signedIn) throw redirect(safeNextPath(new URL(request.url).searchParams.get("next")));
  return null;
}

export default function Login() {
  const trpc = useTRPC();
  const queryClient = useQueryClient();
  const navigate = useNavigate();
  const [params] = useSearchParams();
  const hydrated = useHydrated();
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const login = useMutation(
    trpc.auth.login.mutationOptions({
      onSuccess: () => {
        queryClient.clear();
        navigate(safeNextPath(params.get("next")), { replace: true });
      },
    }),
  );

  function submit(event: FormEvent) {
    event.preventDefault();
    login.mutate({ email, password });
  }

  const message =
    login.error && errorCode(login.error) === "UNAUTHORIZED" ? "Email or password is incorrect." : login.error ? errorMessage(login.error) : null;

  return (
    <main className="login-page">
      <div className="login-card">
        <div className="brand brand-large">
          <span className="brand-mark" aria-hidden="true">
            ⚓
          </span>
          <span>Berth</span>
        </div>
        <h1>Sign in</h1>
        <p className="muted">Self-hosted orchestration for stateful AI agents.</p>
        {/* method=post: even before the page is interactive, a password never ends up in a URL. */}
        <form method="post" onSubmit={submit} className="stack" noValidate>
          <div className="field">
            <label htmlFor="login-email">Email</label>
            <input
              id="login-email"
              name="email"
              type="email"
              autoComplete="username"
              required
              autoFocus
              value={email}
              onChange={(event) => setEmail(event.target.value)}
            />
          </div>
          <div className="field">
            <label htmlFor="login-password">Password</label>
            <input
              id="login-password"
              name="password"
              type="password"
              autoComplete="current-password"
              required
              value={password}
              onChange={(event) => setPassword(event.target.value)}
            />
          </div>
          <div className="login-message" aria-live="assertive">
            {message ? (
              <p className="notice notice-error" role="alert">
                {message}
              </p>
            ) : null}
          </div>
          <button type="submit" className="button button-primary button-block" disabled={!hydrated || login.isPending || !email || !password}>
            {login.isPending ? "Signing in…" : "Sign in"}
          </button>
        </form>
        <p className="muted small">
          The first start prints the admin password once and saves it to <code>.berth/admin-password</code>.
        </p>
      </div>
    </main>
  );
}
