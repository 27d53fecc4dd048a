// Builds dist/esm (ES modules) and dist/cjs (CommonJS), each with type declarations, with the
// TypeScript compiler alone.
import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const tsc = join(root, "node_modules", "typescript", "bin", "tsc");
rmSync(join(root, "dist"), { recursive: true, force: true });
execFileSync(process.execPath, [tsc, "-p", "tsconfig.json"], { cwd: root, stdio: "inherit" });
execFileSync(
  process.execPath,
  [tsc, "-p", "tsconfig.json", "--module", "CommonJS", "--moduleResolution", "node10", "--outDir", "dist/cjs"],
  { cwd: root, stdio: "inherit" },
);
mkdirSync(join(root, "dist", "cjs"), { recursive: true });
writeFileSync(join(root, "dist", "cjs", "package.json"), '{ "type": "commonjs" }\n');
