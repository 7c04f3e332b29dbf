// Charts of the portfolio page: the value over time (lightweight-charts) and allocation bars.
import {
  AreaSeries,
  ColorType,
  createChart,
} from "../vendor/lightweight-charts/lightweight-charts.standalone.production.mjs";
import { money } from "./format.js";

// Axis labels grouped by the browser's locale ("130,000.00"); the exact amounts are in the page text.
const axis = new Intl.NumberFormat(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

// The chart library's attribution link (its licence asks for it) is a logo without text: give it
// an accessible name, once the library has drawn it.
export function nameAttributionLink(container) {
  const name = () => {
    const link = container.querySelector("a#tv-attr-logo, a[href*='tradingview.com']");
    if (!link) return false;
    link.setAttribute("aria-label", "Charts by TradingView (opens in a new tab)");
    link.setAttribute("title", "Charts by TradingView");
    return true;
  };
  if (name()) return;
  const observer = new MutationObserver(() => name() && observer.disconnect());
  observer.observe(container, { childList: true, subtree: true });
}

// Time-axis labels: a span under a few hours shows seconds when minutes alone would repeat.
function timeSpanOptions(data) {
  const span = data.length > 1 ? data[data.length - 1].time - data[0].time : 0;
  return { timeVisible: true, secondsVisible: span > 0 && span < 15 * 60 };
}

// The value chart: snapshots from the server, then extended by every live valuation.
// Values are converted to numbers for plotting only; every number shown as text stays a string.
export class ValueChart {
  constructor(el) {
    this.chart = createChart(el, {
      autoSize: true,
      layout: { background: { type: ColorType.Solid, color: "transparent" } },
      timeScale: { timeVisible: true, secondsVisible: false },
      rightPriceScale: { borderVisible: false },
      localization: { priceFormatter: (value) => axis.format(value) },
    });
    nameAttributionLink(el);
    this.series = this.chart.addSeries(AreaSeries, { lineWidth: 2, priceLineVisible: false });
    this.last = null;
    this.count = 0; // points plotted
    this.applyTheme();
    document.addEventListener("livefolio:theme", () => this.applyTheme());
    matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => this.applyTheme());
  }

  applyTheme() {
    const accent = cssVar("--accent");
    this.chart.applyOptions({
      layout: { textColor: cssVar("--muted") },
      grid: { vertLines: { color: cssVar("--line") }, horzLines: { color: cssVar("--line") } },
    });
    this.series.applyOptions({ lineColor: accent, topColor: `${accent}55`, bottomColor: `${accent}05` });
  }

  setData(points) {
    const data = [];
    for (const p of points) {
      const time = Math.floor(Date.parse(p.at) / 1000);
      if (data.length && data[data.length - 1].time >= time) continue; // strictly increasing
      data.push({ time, value: Number(p.value) });
    }
    this.series.setData(data);
    this.chart.applyOptions({ timeScale: timeSpanOptions(data) });
    this.last = data.length ? data[data.length - 1] : null;
    this.count = data.length;
    this.chart.timeScale().fitContent();
  }

  // A valuation is plotted at the time of its prices. One whose prices are older than the last
  // point (a snapshot is stamped when it was taken, after its prices) is still the newest
  // value: it moves the last point, so that the line always ends at the total shown.
  extend(at, value) {
    if (value === null || value === undefined) return;
    let time = Math.floor(Date.parse(at) / 1000);
    if (this.last && time < this.last.time) time = this.last.time;
    const added = !this.last || time > this.last.time;
    // A chart showing every point (not zoomed in or scrolled back by the person) keeps showing
    // every point as the line grows: the time scale would shift by a bar per new point and the
    // first points slide off the left edge.
    const whole = added && this.showsAll();
    this.last = { time, value: Number(value) };
    this.series.update(this.last);
    if (added) this.count += 1;
    if (whole) this.chart.timeScale().fitContent();
  }

  showsAll() {
    const range = this.chart.timeScale().getVisibleLogicalRange();
    return !range || (range.from <= 0.5 && range.to >= this.count - 1.5);
  }
}

// Allocation as labelled horizontal bars: readable on a phone, text for screen readers.
// Slices are the protocol's allocation shape ({key, value, weight_pct}); the percentage shown is
// the server's string, the bar width only is computed from it.
export function renderAllocation(el, slices, currency) {
  el.replaceChildren();
  for (const slice of slices) {
    const row = document.createElement("div");
    row.className = "alloc-row";
    row.setAttribute("role", "listitem");
    row.dataset.key = slice.key;
    const pct = slice.weight_pct === null || slice.weight_pct === undefined ? null : slice.weight_pct;
    row.innerHTML = '<span class="alloc-label"></span><span class="alloc-bar"><span></span></span><span class="alloc-pct num"></span>';
    row.querySelector(".alloc-label").textContent = slice.key;
    row.querySelector(".alloc-bar > span").style.width = `${Math.max(0, Math.min(100, Number(pct) || 0))}%`;
    row.querySelector(".alloc-pct").textContent = pct === null ? "—" : `${pct}%`;
    row.title = `${slice.key}: ${money(slice.value, currency)}${pct === null ? "" : ` (${pct}%)`}`;
    el.appendChild(row);
  }
}
