import packageJson from "../package.json" with { type: "json" };

export const BERTH_VERSION: string = packageJson.version;
