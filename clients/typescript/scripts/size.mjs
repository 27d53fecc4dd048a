// Prints the SDK's size as a browser app ships it: bundled, minified, gzipped.
import { build } from "esbuild";
import { gzipSync } from "node:zlib";

const result = await build({
  entryPoints: ["dist/esm/index.js"],
  bundle: true,
  minify: true,
  format: "esm",
  write: false,
});
const code = result.outputFiles[0].contents;
console.log(`minified: ${code.length} bytes, minified + gzip: ${gzipSync(code).length} bytes`);
