// The instrument page: 1-minute candles extended by live quotes, the volume traded each minute
// beneath them (from the trades the feed reports), 24 h stats, trades, book.
// A relative path, not an import map: the Content-Security-Policy forbids inline scripts.
import {
  CandlestickSeries,
  ColorType,
  createChart,
  HistogramSeries,
} from "../vendor/lightweight-charts/lightweight-charts.standalone.production.mjs";
import { nameAttributionLink } from "./charts.js";
import { flash, money, percent, price, priceDecimals, quantity, setText, sign, time } from "./format.js";
import { LiveConnection, showStatus } from "./live.js";

const root = document.getElementById("instrument");
const currency = root.dataset.currency;
const assetClass = root.dataset.assetClass;
// Every price on the page (quote, bid, ask, stats, tape, book, axis) at one precision: the
// instrument's own (set in the admin), else set from the first price seen.
let decimals = root.dataset.priceDecimals === undefined ? null : Number(root.dataset.priceDecimals);
const px = (value, withCurrency = false) => {
  if (decimals === null && value !== null && value !== undefined) decimals = priceDecimals(value, assetClass);
  return price(value, decimals ?? 2, withCurrency ? currency : null);
};
const $ = (id) => document.getElementById(id);
const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

const chart = createChart($("chart"), {
  autoSize: true,
  layout: { background: { type: ColorType.Solid, color: "transparent" } },
  timeScale: { timeVisible: true, secondsVisible: false },
  localization: { priceFormatter: (value) => px(String(value)) },
});
const candles = chart.addSeries(CandlestickSeries, { borderVisible: false });
// Volume on its own scale in the bottom fifth, under the candles (which keep the top 80 %).
const volume = chart.addSeries(HistogramSeries, {
  priceScaleId: "volume",
  priceFormat: { type: "volume" },
  lastValueVisible: false,
  priceLineVisible: false,
});
chart.priceScale("volume").applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
candles.priceScale().applyOptions({ scaleMargins: { top: 0.05, bottom: 0.25 } });
nameAttributionLink($("chart"));

function applyTheme() {
  chart.applyOptions({
    layout: { textColor: cssVar("--muted") },
    grid: { vertLines: { color: cssVar("--line") }, horzLines: { color: cssVar("--line") } },
  });
  const up = cssVar("--up");
  const down = cssVar("--down");
  candles.applyOptions({ upColor: up, downColor: down, wickUpColor: up, wickDownColor: down });
  volume.applyOptions({ color: cssVar("--muted") });
}
applyTheme();
document.addEventListener("livefolio:theme", applyTheme);
matchMedia("(prefers-color-scheme: dark)").addEventListener("change", applyTheme);

let lastBar = null;
let lastPrice = null;

// The chart library plots numbers: converting here is for drawing only, never for money math.
function bar(b) {
  return {
    time: Date.parse(b.start) / 1000,
    open: Number(b.open),
    high: Number(b.high),
    low: Number(b.low),
    close: Number(b.close),
  };
}

// Candles fill the width: every bar of the day is fitted to the chart; the first few of a feed
// that just started are drawn at a readable width from the left, not squeezed against the right.
const FEW_BARS = 12;
function fitCandles(count) {
  const scale = chart.timeScale();
  if (count === 0) return;
  if (count >= FEW_BARS) scale.fitContent();
  else scale.setVisibleLogicalRange({ from: -1, to: FEW_BARS });
}

function extendCandle(value, asOf) {
  const minute = Math.floor(Date.parse(asOf) / 60000) * 60;
  const p = Number(value);
  if (lastBar && lastBar.time === minute) {
    lastBar = { ...lastBar, high: Math.max(lastBar.high, p), low: Math.min(lastBar.low, p), close: p };
  } else if (!lastBar || minute > lastBar.time) {
    lastBar = { time: minute, open: p, high: p, low: p, close: p };
    $("chart").dataset.bars = Number($("chart").dataset.bars || 0) + 1;
  } else {
    return; // an older tick than the newest candle: the bars from the server already hold it
  }
  candles.update(lastBar);
}

// Size traded per minute, from the trades the page has seen (the snapshot's recent ones, then
// each live trade); the server's bars carry prices only.
const minuteVolume = new Map();
function countVolume(trades, { redraw }) {
  let newest = null;
  for (const t of trades) {
    const minute = Math.floor(Date.parse(t.as_of) / 60000) * 60;
    minuteVolume.set(minute, (minuteVolume.get(minute) || 0) + Number(t.size));
    newest = minute;
  }
  const minutes = [...minuteVolume.keys()].sort((a, b) => a - b);
  if (redraw || newest === null || newest < minutes[minutes.length - 1]) {
    volume.setData(minutes.map((time) => ({ time, value: minuteVolume.get(time) })));
  } else {
    volume.update({ time: newest, value: minuteVolume.get(newest) });
  }
  $("chart").dataset.volumeBars = minutes.length; // minutes with volume drawn (tests read it)
}

function showQuote(q) {
  if (!q) return;
  const direction = lastPrice === null ? 0 : Math.sign(Number(q.price) - Number(lastPrice));
  lastPrice = q.price;
  setText($("price"), px(q.price, true));
  flash($("price"), direction);
  $("bid").textContent = px(q.bid);
  $("ask").textContent = px(q.ask);
  $("asof").textContent = time(q.as_of);
  $("stale").hidden = !q.stale;
}

function showStats(s) {
  $("stat-open").textContent = s ? px(s.open) : "—";
  $("stat-high").textContent = s ? px(s.high) : "—";
  $("stat-low").textContent = s ? px(s.low) : "—";
  $("stat-change").textContent = s
    ? `${sign(s.change)}${px(s.change)} (${percent(s.change_pct, { signed: true })})`
    : "—";
  const change = $("change");
  change.textContent = s ? percent(s.change_pct, { signed: true }) : "";
  change.className = `num change ${s && s.change.startsWith("-") ? "down" : "up"}`;
}

function showPosition(p) {
  $("position").textContent = p
    ? `${quantity(p.quantity)} (${money(p.value, currency)}) in ${p.portfolios.join(", ")}`
    : "None.";
}

function addTrade(t) {
  const row = document.createElement("tr");
  row.className = t.side === "sell" ? "down" : "up";
  row.innerHTML = "<td></td><td class='num'></td><td class='num'></td>";
  row.children[0].textContent = time(t.as_of);
  row.children[1].textContent = px(t.price);
  row.children[2].textContent = quantity(t.size);
  const body = $("trades");
  body.prepend(row);
  while (body.children.length > 50) body.lastElementChild.remove();
  $("trades-empty").hidden = true;
}

function showBook(book) {
  const body = $("book");
  body.replaceChildren();
  if (!book) return;
  $("book-empty").hidden = true;
  const depth = Math.max(book.bids.length, book.asks.length);
  const sizes = [...book.bids, ...book.asks].map((level) => Number(level[1]));
  const largest = Math.max(...sizes, 1e-12);
  for (let i = 0; i < Math.min(depth, 10); i++) {
    const [bid, bidSize] = book.bids[i] || [null, null];
    const [ask, askSize] = book.asks[i] || [null, null];
    const row = document.createElement("tr");
    row.innerHTML = "<td class='num'></td><td class='num up'></td><td class='num down'></td><td class='num'></td>";
    row.children[0].textContent = bidSize === null ? "" : quantity(bidSize);
    row.children[1].textContent = bid === null ? "" : px(bid);
    row.children[2].textContent = ask === null ? "" : px(ask);
    row.children[3].textContent = askSize === null ? "" : quantity(askSize);
    row.style.setProperty("--bid-depth", `${(100 * Number(bidSize || 0)) / largest}%`);
    row.style.setProperty("--ask-depth", `${(100 * Number(askSize || 0)) / largest}%`);
    body.appendChild(row);
  }
}

function onMessage(message) {
  if (message.type === "snapshot") {
    const bars = message.bars.map(bar);
    if (message.quote) px(message.quote.price); // the page's precision, before the axis draws
    candles.setData(bars);
    $("chart").dataset.bars = bars.length; // how many candles are drawn (tests read it)
    lastBar = bars.length ? bars[bars.length - 1] : null;
    fitCandles(bars.length);
    showQuote(message.quote);
    showStats(message.stats_24h);
    showPosition(message.position);
    $("trades").replaceChildren();
    for (const t of message.trades) addTrade(t); // oldest first: each goes on top, newest last
    minuteVolume.clear();
    countVolume(message.trades, { redraw: true });
    showBook(message.book);
  } else if (message.type === "quote") {
    showQuote({ ...message, stale: false });
    extendCandle(message.price, message.as_of);
  } else if (message.type === "trade") {
    addTrade(message);
    countVolume([message], { redraw: false });
  } else if (message.type === "book") {
    showBook(message);
  }
}

function onStatus(status) {
  showStatus($("status"), status);
}

const connection = new LiveConnection({
  path: root.dataset.wsPath,
  onMessage,
  onStatus,
  heartbeatSeconds: Number(root.dataset.heartbeat || 10),
});
window.livefolioConnection = connection;
connection.connect();
