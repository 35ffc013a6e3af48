// Copies the browser builds of uPlot (the "Ticks" line) and TradingView's Lightweight Charts (candles)
// from node_modules into static/vendor, where the plugin serves them.
// Runs on `npm ci` (the "prepare" script) and on `npm run build`; nothing is fetched at page load.
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const modules = join(here, "node_modules");
const vendor = join(here, "static", "vendor");
const files = [
  ["uplot/dist/uPlot.iife.min.js", "uPlot.iife.min.js"],
  ["uplot/dist/uPlot.min.css", "uPlot.min.css"],
  // The standalone build bundles its one dependency (fancy-canvas) and defines window.LightweightCharts.
  ["lightweight-charts/dist/lightweight-charts.standalone.production.js", "lightweight-charts.standalone.production.js"],
];
mkdirSync(vendor, { recursive: true });
for (const [from, name] of files) {
  copyFileSync(join(modules, ...from.split("/")), join(vendor, name));
  console.log(`quotes_view: ${join("static", "vendor", name)}`);
}
