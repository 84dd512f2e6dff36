import path from "node:path";
import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "./config";

function problemsOf(env: Record<string, string>): string {
  try {
    loadConfig(env);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as Error).message;
  }
  throw new Error("expected a ConfigError");
}

describe("loadConfig", () => {
  it("applies the documented defaults to an empty environment", () => {
    const config = loadConfig({});
    expect(config).toMatchObject({
      port: 3000,
      databaseUrl: undefined,
      dataDir: path.resolve(".berth"),
      adminEmail: "admin@berth.local",
      gateway: undefined,
      sandboxBackend: "local",
      containerEnv: {},
    });
  });

  it("names the variable in one line when PORT is not a port", () => {
    const message = problemsOf({ PORT: "abc" });
    expect(message).toBe('Invalid configuration: PORT must be a whole number from 1 to 65535 (got "abc")');
    expect(message).not.toContain("\n");
    expect(problemsOf({ PORT: "70000" })).toContain("PORT");
  });

  it("lists every bad variable, and never echoes a secret's value", () => {
    const message = problemsOf({ DATABASE_URL: "mysql://user:hunter2@db/x", BERTH_SANDBOX_BACKEND: "docker", BERTH_SECRET_KEY: "short-secret" });
    expect(message).toContain("DATABASE_URL must be a postgres:// or postgresql:// URL");
    expect(message).toContain("BERTH_SANDBOX_BACKEND");
    expect(message).toContain("BERTH_SECRET_KEY must be 32 bytes");
    expect(message).not.toContain("hunter2");
    expect(message).not.toContain("short-secret");
  });

  it("reads the Kubernetes backend settings, and requires the sandbox image for it", () => {
    expect(loadConfig({}).kubernetes).toEqual({
      namespace: "berth",
      image: undefined,
      runtimeClassName: undefined,
      daemonPort: 8080,
      workspaceSize: "5Gi",
      storageClassName: undefined,
      readyTimeoutMs: 180_000,
    });
    const config = loadConfig({ BERTH_SANDBOX_BACKEND: "kubernetes", BERTH_SANDBOX_IMAGE: "berth:1", BERTH_K8S_NAMESPACE: "agents", BERTH_K8S_RUNTIME_CLASS: "gvisor", BERTH_SANDBOX_DAEMON_PORT: "9000" });
    expect(config.kubernetes).toMatchObject({ namespace: "agents", image: "berth:1", runtimeClassName: "gvisor", daemonPort: 9000 });
    expect(problemsOf({ BERTH_SANDBOX_BACKEND: "kubernetes" })).toContain("BERTH_SANDBOX_IMAGE is required when BERTH_SANDBOX_BACKEND=kubernetes");
    expect(problemsOf({ BERTH_K8S_NAMESPACE: "Not_A_Namespace" })).toContain("BERTH_K8S_NAMESPACE must be a Kubernetes namespace name");
    expect(problemsOf({ BERTH_K8S_WORKSPACE_SIZE: "lots" })).toContain("BERTH_K8S_WORKSPACE_SIZE must be a Kubernetes quantity");
  });

  it("accepts a 32-byte secret key as hex or base64", () => {
    const hex = "ab".repeat(32);
    expect(loadConfig({ BERTH_SECRET_KEY: hex }).secretKey?.toString("hex")).toBe(hex);
    const base64 = Buffer.alloc(32, 7).toString("base64");
    expect(loadConfig({ BERTH_SECRET_KEY: base64 }).secretKey).toEqual(Buffer.alloc(32, 7));
  });

  it("turns CONTAINER_ENV_X into X for sandboxes, and rejects unusable names", () => {
    expect(loadConfig({ CONTAINER_ENV_SAMPLE_SECRET: "s3", CONTAINER_ENV_A_B: "" }).containerEnv).toEqual({ SAMPLE_SECRET: "s3", A_B: "" });
    expect(problemsOf({ "CONTAINER_ENV_BAD-NAME": "x" })).toContain("CONTAINER_ENV_BAD-NAME");
  });

  it("configures the gateway from LITELLM_BASE_URL, trimming the trailing slash", () => {
    expect(loadConfig({ LITELLM_BASE_URL: "http://127.0.0.1:4000/", LITELLM_API_KEY: "k" }).gateway).toEqual({
      baseUrl: "http://127.0.0.1:4000",
      apiKey: "k",
    });
    expect(problemsOf({ LITELLM_API_KEY: "k" })).toContain("LITELLM_BASE_URL");
    expect(problemsOf({ LITELLM_BASE_URL: "ftp://x" })).toContain("LITELLM_BASE_URL must be an http");
  });

  it("reads the API key cache lifetime, 0 turning the cache off", () => {
    expect(loadConfig({}).authCacheMs).toBe(5_000);
    expect(loadConfig({ BERTH_AUTH_CACHE_MS: "0" }).authCacheMs).toBe(0);
    expect(problemsOf({ BERTH_AUTH_CACHE_MS: "-1" })).toContain("BERTH_AUTH_CACHE_MS must be a whole number from 0 to 60000");
    expect(problemsOf({ BERTH_AUTH_CACHE_MS: "90000" })).toContain("BERTH_AUTH_CACHE_MS");
  });

  it("reads how long a terminated session's workspace is kept, 0 deleting it at termination", () => {
    expect(loadConfig({}).workspaceRetentionHours).toBe(0);
    expect(loadConfig({ BERTH_WORKSPACE_RETENTION_HOURS: "72" }).workspaceRetentionHours).toBe(72);
    expect(problemsOf({ BERTH_WORKSPACE_RETENTION_HOURS: "1.5" })).toContain("BERTH_WORKSPACE_RETENTION_HOURS must be a whole number from 0 to 87600");
    expect(problemsOf({ BERTH_WORKSPACE_RETENTION_HOURS: "100000" })).toContain("BERTH_WORKSPACE_RETENTION_HOURS");
  });

  it("reads the header that carries the client's address behind a proxy (lower-cased), unset by default", () => {
    expect(loadConfig({}).clientAddressHeader).toBeUndefined();
    expect(loadConfig({ BERTH_CLIENT_ADDRESS_HEADER: "Fly-Client-IP" }).clientAddressHeader).toBe("fly-client-ip");
    expect(problemsOf({ BERTH_CLIENT_ADDRESS_HEADER: "x forwarded: for" })).toContain("BERTH_CLIENT_ADDRESS_HEADER must be an HTTP header name");
  });

  it("reads the proxies allowed to set that header: addresses, CIDR ranges and named ranges, refusing anything else", () => {
    expect(loadConfig({}).trustedProxies).toBeUndefined();
    const { trustedProxies } = loadConfig({ BERTH_CLIENT_ADDRESS_HEADER: "x-forwarded-for", BERTH_TRUSTED_PROXIES: "10.0.0.0/8, 2001:db8::/32, loopback" });
    expect(trustedProxies?.matches("10.20.30.40")).toBe(true);
    expect(trustedProxies?.matches("2001:db8::7")).toBe(true);
    expect(trustedProxies?.matches("127.0.0.1")).toBe(true);
    expect(trustedProxies?.matches("192.0.2.1")).toBe(false);
    expect(problemsOf({ BERTH_CLIENT_ADDRESS_HEADER: "x-forwarded-for", BERTH_TRUSTED_PROXIES: "10.0.0.0/33" })).toContain('BERTH_TRUSTED_PROXIES "10.0.0.0/33" is not an IP address, a CIDR range');
    expect(problemsOf({ BERTH_CLIENT_ADDRESS_HEADER: "x-forwarded-for", BERTH_TRUSTED_PROXIES: "proxy.internal" })).toContain('"proxy.internal" is not an IP address');
    // Alone it still means something: whose X-Forwarded-Host / X-Forwarded-Proto the same-origin check believes.
    expect(loadConfig({ BERTH_TRUSTED_PROXIES: "10.0.0.0/8" }).trustedProxies?.matches("10.0.0.1")).toBe(true);
  });

  it("reads the public URL as its origin, refusing anything but an http(s) URL", () => {
    expect(loadConfig({}).publicUrl).toBeUndefined();
    expect(loadConfig({ BERTH_PUBLIC_URL: "https://Berth.Example.com/" }).publicUrl).toBe("https://berth.example.com");
    expect(loadConfig({ BERTH_PUBLIC_URL: "http://10.0.0.5:8080/berth" }).publicUrl).toBe("http://10.0.0.5:8080");
    expect(problemsOf({ BERTH_PUBLIC_URL: "berth.example.com" })).toContain("BERTH_PUBLIC_URL must be an http:// or https:// URL");
    expect(problemsOf({ BERTH_PUBLIC_URL: "ftp://berth.example.com" })).toContain("BERTH_PUBLIC_URL must be an http:// or https:// URL");
  });

  it("limits request bodies to 16 MiB unless told otherwise, within 64 KiB to 1 GiB", () => {
    expect(loadConfig({}).maxBodyBytes).toBe(16 * 1024 * 1024);
    expect(loadConfig({ BERTH_MAX_BODY_BYTES: "1048576" }).maxBodyBytes).toBe(1_048_576);
    expect(problemsOf({ BERTH_MAX_BODY_BYTES: "1000" })).toContain("BERTH_MAX_BODY_BYTES must be a whole number of bytes from 65536");
    expect(problemsOf({ BERTH_MAX_BODY_BYTES: "16M" })).toContain('(got "16M")');
  });

  it("takes a Unix socket directory in DATABASE_URL's host parameter, and refuses any other host parameter", () => {
    expect(loadConfig({ DATABASE_URL: "postgres://berth:pw@localhost/berth?host=/var/run/postgresql" }).databaseUrl).toBe("postgres://berth:pw@localhost/berth?host=/var/run/postgresql");
    expect(problemsOf({ DATABASE_URL: "postgres://berth:pw@localhost/berth?host=db2" })).toContain("DATABASE_URL may name a Unix socket directory in ?host=");
  });

  it("treats empty optional variables as unset", () => {
    expect(loadConfig({ DATABASE_URL: "", BERTH_ADMIN_API_KEY: " " }).databaseUrl).toBeUndefined();
  });
});
