// Bundles the console into dist/ (index.html, console.js, console.css): the files the binary
// embeds. `--check` fails when the committed dist/ differs from a fresh build.
import { build } from "esbuild";
import { mkdirSync, readFileSync, writeFileSync, copyFileSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const check = process.argv.includes("--check");
const result = await build({
  entryPoints: [join(root, "src", "console.js")],
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2020",
  legalComments: "none",
  write: false,
});
const outputs = {
  "console.js": Buffer.from(result.outputFiles[0].contents),
  "index.html": readFileSync(join(root, "src", "index.html")),
  "console.css": readFileSync(join(root, "src", "console.css")),
};
const dist = join(root, "dist");
if (check) {
  const stale = Object.entries(outputs).filter(
    ([name, bytes]) => !existsSync(join(dist, name)) || !readFileSync(join(dist, name)).equals(bytes),
  );
  if (stale.length > 0) {
    console.error(`dist/ is stale (${stale.map(([n]) => n).join(", ")}): run npm run build and commit dist/`);
    process.exit(1);
  }
  console.log("dist/ matches the sources");
} else {
  mkdirSync(dist, { recursive: true });
  for (const [name, bytes] of Object.entries(outputs)) writeFileSync(join(dist, name), bytes);
  console.log(`dist/: ${Object.entries(outputs).map(([n, b]) => `${n} ${b.length} B`).join(", ")}`);
}
