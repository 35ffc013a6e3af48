// Copies uPlot's browser build from node_modules into static/vendor, where the plugin serves it.
// Runs on `npm ci` (the "prepare" script) and on `npm run build`; nothing is fetched at page load.
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "node_modules", "uplot", "dist");
const vendor = join(here, "static", "vendor");
mkdirSync(vendor, { recursive: true });
for (const name of ["uPlot.iife.min.js", "uPlot.min.css"]) {
  copyFileSync(join(dist, name), join(vendor, name));
  console.log(`quotes_view: ${join("static", "vendor", name)}`);
}
