// Validate an AsyncAPI document with the official parser (npm @asyncapi/parser).
// Usage: node docs/validate-asyncapi.mjs [docs/asyncapi.yaml]; exits 1 on any error.
import { readFile } from "node:fs/promises";
import { Parser } from "@asyncapi/parser";

const path = process.argv[2] ?? new URL("./asyncapi.yaml", import.meta.url).pathname;
const parser = new Parser();
const { document, diagnostics } = await parser.parse(await readFile(path, "utf8"));
const severity = ["error", "warning", "info", "hint"];
for (const d of diagnostics) {
  console.log(`${severity[d.severity]} ${d.code} at ${d.path.join(".")}: ${d.message}`);
}
const errors = diagnostics.filter((d) => d.severity === 0);
if (!document || errors.length) {
  console.log(`${path}: INVALID (${errors.length} errors)`);
  process.exit(1);
}
console.log(`${path}: valid AsyncAPI ${document.version()}`);
