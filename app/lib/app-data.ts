import { useRouteLoaderData } from "@remix-run/react";
import type { loader } from "../routes/_app";

/** Who is signed in, and into which team: loaded once by the dashboard layout for every page. */
export function useAppData() {
  const data = useRouteLoaderData<typeof loader>("routes/_app");
  if (!data) throw new Error("useAppData is only available inside the dashboard layout");
  return data;
}
