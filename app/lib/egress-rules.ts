/**
 * Allow rules in the one-line syntax, checked by the server's own code (server/egress/policy.ts,
 * pure, with zod), so a rule accepted here is one the API accepts.
 */
import { formatAllowRule, parseAllowFlag, type EgressRule } from "../../server/egress/policy";

export { formatAllowRule, parseAllowFlag };

export type RuleLineError = { line: number; message: string };

/**
 * Rules written one a line; blank lines and `#` comments are skipped. `lines[i]` is the line of
 * `rules[i]`, so an error the server reports for `egress.allow.i` can point at its line.
 */
export function parseAllowRules(text: string): { rules: EgressRule[]; lines: number[]; errors: RuleLineError[] } {
  const rules: EgressRule[] = [];
  const lines: number[] = [];
  const errors: RuleLineError[] = [];
  for (const [index, raw] of text.split("\n").entries()) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    try {
      rules.push(parseAllowFlag(line));
      lines.push(index + 1);
    } catch (error) {
      errors.push({ line: index + 1, message: ruleProblem(line, error) });
    }
  }
  return { rules, lines, errors };
}

/** parseAllowFlag's message for `text` without its `invalid allow rule "…": ` lead (the caller names the line or flag). */
export function ruleProblem(text: string, error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  const lead = `invalid allow rule "${text.trim()}": `;
  return message.startsWith(lead) ? message.slice(lead.length) : message;
}

