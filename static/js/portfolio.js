// The live portfolio page: draws the snapshot, applies valuations, shows connection state.
import { renderAllocation, ValueChart } from "./charts.js";
import { flash, money, percent, price, priceDecimals, quantity, setText, sign, time } from "./format.js";
import { LiveConnection, showStatus } from "./live.js";

const root = document.getElementById("portfolios");
const template = document.getElementById("portfolio-template");
const statusEl = document.getElementById("status");
// The page shows one portfolio (the switcher picks it); the snapshot carries all of the user's.
const wanted = root.dataset.portfolioId ? Number(root.dataset.portfolioId) : null;
const shown = new Map(); // portfolio id -> { el, valuedAt, chart }

function signed(amount, currency, pct) {
  if (amount === null || amount === undefined) return "—";
  const text = sign(amount) + money(amount, currency);
  return pct === null || pct === undefined ? text : `${text} (${percent(pct, { signed: true })})`;
}
// A change cell: the amount and its percentage in two parts, so that a phone can show the
// percentage alone.
function setChange(cell, amount, currency, pct) {
  if (!cell.querySelector(".amount")) cell.innerHTML = '<span class="amount"></span> <span class="pct"></span>';
  const missing = amount === null || amount === undefined;
  setText(cell.querySelector(".amount"), missing ? "—" : sign(amount) + money(amount, currency));
  const text = missing || pct === null || pct === undefined ? "" : percent(pct, { signed: true });
  const pctEl = cell.querySelector(".pct");
  if (pctEl.dataset.pct === text) return;
  pctEl.dataset.pct = text;
  // The brackets are their own elements: a phone shows the bare percentage.
  const [open, close] = ["(", ")"].map((b) => Object.assign(document.createElement("span"), { className: "paren", textContent: b }));
  pctEl.replaceChildren(...(text ? [open, text, close] : []));
}
function tone(el, amount) {
  el.classList.toggle("up", !!amount && !amount.startsWith("-") && Number(amount) !== 0);
  el.classList.toggle("down", !!amount && amount.startsWith("-"));
}
// Direction of a change for the flash colour: compared as numbers only to pick green or red.
function direction(before, after) {
  if (!before || after === null || after === undefined) return 0;
  return Math.sign(Number(after) - Number(before));
}

// By instrument: each priced holding's share of the total, then cash, largest first.
function instrumentSlices(portfolio) {
  const slices = portfolio.holdings
    .filter((h) => h.in_total)
    .map((h) => ({ key: h.symbol, value: h.value_base, weight_pct: h.weight_pct }));
  for (const c of portfolio.cash || []) {
    slices.push({ key: `Cash ${c.currency}`, value: c.value_base, weight_pct: c.weight_pct });
  }
  return slices.sort((a, b) => Number(b.weight_pct || 0) - Number(a.weight_pct || 0));
}

// A portfolio with nothing in it (no position, no cash, no ledger figure) says what to do next
// instead of drawing empty figures, an empty chart and a header-only table.
function isEmpty(portfolio) {
  const nothing = (v) => v === null || v === undefined || Number(v) === 0;
  return (
    portfolio.holdings.length === 0 &&
    (portfolio.cash || []).every((c) => nothing(c.amount)) &&
    nothing(portfolio.realized_pnl) &&
    nothing(portfolio.income)
  );
}
function showEmpty(el, portfolio) {
  const empty = isEmpty(portfolio) && !!root.dataset.addUrl;
  const box = el.querySelector('[data-field="empty"]');
  box.hidden = !empty;
  if (empty) {
    box.querySelector('[data-field="add-link"]').href = root.dataset.addUrl;
    box.querySelector('[data-field="import-link"]').href = root.dataset.importUrl;
  }
  for (const field of ["figures", "positions", "allocation"]) {
    el.querySelector(`[data-field="${field}"]`).hidden = empty;
  }
  const chart = el.querySelector('[data-field="value-section"]');
  if (!chart.dataset.unavailable) chart.hidden = empty;
}

// ---- Value chart: the snapshot series of the chosen range, then each live valuation's total.
function setupChart(entry, portfolioId) {
  const { el } = entry;
  const url = root.dataset.historyUrl;
  const section = el.querySelector(".value-section");
  if (!url || portfolioId !== wanted) {
    section.hidden = true;
    section.dataset.unavailable = "true";
    return;
  }
  entry.chart = new ValueChart(el.querySelector('[data-field="chart"]'));
  // Exposed for debugging in the console and for the browser tests (what the chart plots).
  window.livefolioValueChart = entry.chart;
  entry.loading = 0;
  const buttons = [...el.querySelectorAll(".ranges button")];
  for (const button of buttons) {
    button.addEventListener("click", () => {
      for (const b of buttons) b.setAttribute("aria-pressed", String(b === button));
      loadHistory(entry, button.dataset.range);
    });
  }
  loadHistory(entry, buttons.find((b) => b.getAttribute("aria-pressed") === "true").dataset.range);
}

// 1D is drawn from the minute snapshots; longer ranges daily from the ledger and price history.
function chartNote(body) {
  if (body.problem) return `The daily values could not be computed: ${body.problem}`;
  if (!body.points.length) {
    return body.source === "ledger"
      ? "No transactions yet; the live value is drawn as it arrives."
      : "No value snapshots in this range yet; the live value is drawn as it arrives.";
  }
  if (body.missing_days) {
    return `Daily values from the price history; on ${body.missing_days} of these days a holding had no close or FX rate yet and is left out.`;
  }
  return "";
}

async function loadHistory(entry, range) {
  const request = ++entry.loading; // only the newest request draws (clicks can race)
  const note = entry.el.querySelector('[data-field="chart-note"]');
  const chartEl = entry.el.querySelector('[data-field="chart"]');
  chartEl.setAttribute("aria-busy", "true");
  try {
    const response = await fetch(`${root.dataset.historyUrl}?range=${encodeURIComponent(range)}`, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    const body = await response.json();
    if (request !== entry.loading) return;
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    entry.chart.setData(body.points);
    if (entry.live) entry.chart.extend(entry.live.at, entry.live.total); // the value right now
    chartEl.dataset.range = range;
    chartEl.dataset.points = String(body.points.length);
    chartEl.dataset.source = body.source || "";
    chartEl.dataset.first = body.points.length ? body.points[0].at : "";
    note.textContent = chartNote(body);
    note.hidden = !note.textContent;
  } catch (err) {
    if (request !== entry.loading) return;
    note.hidden = false;
    note.textContent = `The value history could not be loaded (${err.message}).`;
  } finally {
    if (request === entry.loading) chartEl.removeAttribute("aria-busy");
  }
}

// ---- Holdings table sorting: buttons in the column headers, aria-sort on the sorted one.
const TEXT_KEYS = new Set(["symbol", "asof"]);
const sortState = { key: null, dir: 1 };
function sortValues(h) {
  return {
    symbol: h.symbol,
    quantity: h.quantity,
    price: h.price,
    value: h.value_base ?? h.value,
    cost: h.cost_base,
    day: h.day_change,
    upnl: h.unrealized_pnl,
    rpnl: h.realized_pnl,
    weight: h.weight_pct,
    asof: h.price_as_of,
  };
}
function compare(a, b, key) {
  const x = a.sortValues?.[key];
  const y = b.sortValues?.[key];
  const missingX = x === null || x === undefined;
  const missingY = y === null || y === undefined;
  if (missingX || missingY) return missingX - missingY; // missing values last, either direction
  // Numbers are compared as floats for ordering only; the cells keep the server's strings.
  const order = TEXT_KEYS.has(key) ? String(x).localeCompare(String(y)) : Number(x) - Number(y);
  return order * sortState.dir;
}
function applySort(el) {
  if (!sortState.key) return;
  const body = el.querySelector("tbody");
  const rows = [...body.querySelectorAll("tr[data-instrument]")];
  rows.sort((a, b) => compare(a, b, sortState.key));
  // Append only when the order differs, so focus and flashes survive unchanged updates.
  if (rows.some((row, i) => body.children[i] !== row)) body.append(...rows);
}
function setupSort(el) {
  for (const button of el.querySelectorAll("thead button.sort")) {
    button.addEventListener("click", () => {
      const key = button.dataset.sort;
      // A new column starts A→Z for text and largest first for numbers; a second click reverses.
      if (sortState.key === key) sortState.dir = -sortState.dir;
      else {
        sortState.key = key;
        sortState.dir = TEXT_KEYS.has(key) ? 1 : -1;
      }
      for (const th of el.querySelectorAll("thead th")) th.removeAttribute("aria-sort");
      button.closest("th").setAttribute("aria-sort", sortState.dir > 0 ? "ascending" : "descending");
      applySort(el);
    });
  }
}

function render(portfolio) {
  let entry = shown.get(portfolio.id);
  if (!entry) {
    const el = template.content.firstElementChild.cloneNode(true);
    el.dataset.portfolio = portfolio.id;
    root.appendChild(el);
    entry = { el, valuedAt: null, chart: null };
    shown.set(portfolio.id, entry);
    setupSort(el);
    setupChart(entry, portfolio.id);
  }
  const { el } = entry;
  entry.valuedAt = portfolio.valued_at;
  // The chart grows by each snapshot's and valuation's total, at the price time it reflects.
  if (portfolio.as_of) {
    entry.live = { at: portfolio.as_of, total: portfolio.total };
    entry.chart?.extend(entry.live.at, entry.live.total);
  }
  const base = portfolio.base_currency;
  el.querySelector('[data-field="name"]').textContent = portfolio.name;
  showEmpty(el, portfolio);
  setText(el.querySelector('[data-field="total"]'), money(portfolio.total, base));
  for (const [field, pct] of [["day_change", "day_change_pct"], ["unrealized_pnl", "unrealized_pnl_pct"], ["realized_pnl", null]]) {
    const cell = el.querySelector(`[data-field="${field}"]`);
    setText(cell, signed(portfolio[field], base, pct ? portfolio[pct] : null));
    tone(cell, portfolio[field]);
  }
  setText(el.querySelector('[data-field="income"]'), money(portfolio.income, base));
  setText(el.querySelector('[data-field="cash_total"]'), money(portfolio.cash_total, base));
  const body = el.querySelector("tbody");
  const seen = new Set();
  for (const h of portfolio.holdings) {
    seen.add(String(h.instrument));
    let row = body.querySelector(`tr[data-instrument="${h.instrument}"]`);
    if (!row) {
      row = document.createElement("tr");
      row.dataset.instrument = h.instrument;
      row.innerHTML =
        '<th scope="row"><a class="symbol"></a> <span class="name muted"></span>' +
        ' <span class="badge stale" hidden>stale</span></th>' +
        '<td class="num qty"></td><td class="num price"></td><td class="num value"></td>' +
        '<td class="num cost"></td><td class="num day"></td><td class="num upnl"></td><td class="num rpnl"></td>' +
        '<td class="num weight"></td><td class="num asof muted"></td>';
      body.appendChild(row);
    }
    const link = row.querySelector(".symbol");
    link.textContent = h.symbol;
    link.href = `/i/${encodeURIComponent(h.symbol)}/`;
    row.sortValues = sortValues(h);
    row.querySelector(".name").textContent = h.name;
    setText(row.querySelector(".qty"), quantity(h.quantity));
    // Only the price flashes, green or red, and only when it moved; the rest changes quietly.
    const move = direction(row.dataset.price, h.price);
    row.dataset.price = h.price ?? "";
    const priceCell = row.querySelector(".price");
    setText(priceCell, price(h.price, priceDecimals(h.price, h.asset_class, h.price_decimals), h.currency));
    flash(priceCell, move);
    setText(row.querySelector(".value"), money(h.value, h.currency));
    // Cost of the open position, in the base currency like the P&L beside it.
    setText(row.querySelector(".cost"), money(h.cost_base, base));
    const day = row.querySelector(".day");
    setChange(day, h.day_change, base, h.day_change_pct);
    tone(day, h.day_change);
    const upnl = row.querySelector(".upnl");
    setChange(upnl, h.unrealized_pnl, base, h.unrealized_pnl_pct);
    tone(upnl, h.unrealized_pnl);
    const rpnl = row.querySelector(".rpnl");
    setText(rpnl, signed(h.realized_pnl, h.currency, null));
    tone(rpnl, h.realized_pnl);
    setText(row.querySelector(".weight"), percent(h.weight_pct));
    row.dataset.asOf = h.price_as_of || "";
    markStale(row, h.stale, h.price_as_of);
    row.classList.toggle("unpriced", !h.in_total);
  }
  for (const row of body.querySelectorAll("tr[data-instrument]")) {
    if (!seen.has(row.dataset.instrument)) row.remove();
  }
  const foot = el.querySelector("tfoot");
  foot.replaceChildren(
    ...(portfolio.cash || []).map((c) => {
      const tr = document.createElement("tr");
      tr.className = "cash";
      tr.dataset.currency = c.currency;
      tr.innerHTML = '<th scope="row">Cash <span class="muted"></span></th><td class="qty"></td><td class="price"></td>' +
        '<td class="num value"></td><td class="cost"></td><td class="day"></td><td class="upnl"></td>' +
        '<td class="rpnl"></td><td class="num weight"></td><td class="asof"></td>';
      tr.querySelector("span").textContent = c.currency;
      tr.querySelector(".value").textContent = money(c.amount, c.currency);
      tr.querySelector(".weight").textContent = percent(c.weight_pct);
      return tr;
    }),
  );
  applySort(el);
  renderAllocation(el.querySelector('[data-field="by_instrument"]'), instrumentSlices(portfolio), base);
  renderAllocation(el.querySelector('[data-field="by_asset_class"]'), (portfolio.allocation || {}).asset_class || [], base);
  renderAllocation(el.querySelector('[data-field="by_currency"]'), (portfolio.allocation || {}).currency || [], base);
  el.querySelector('[data-field="issues"]').textContent = (portfolio.issues || []).length
    ? `Left out of the totals: ${portfolio.issues.join("; ")}`
    : "";
  const fxNotes = el.querySelector('[data-field="fx_notes"]');
  if (fxNotes) {
    fxNotes.textContent = (portfolio.fx_notes || []).length
      ? `At today's FX rate, for want of history: ${portfolio.fx_notes.join("; ")}`
      : "";
  }
}

// A price is stale when the server says so, or once it is older than the server's limit while
// no update arrives (the feed is down and nothing is sent): checked every second.
const staleAfterMs = Number(root.dataset.staleAfter || 120) * 1000;
function markStale(row, stale, asOf) {
  const cell = row.querySelector(".asof");
  cell.textContent = time(asOf);
  cell.classList.toggle("stale", stale);
  row.classList.toggle("stale", stale);
  row.querySelector(".badge.stale").hidden = !stale;
  cell.title = stale ? "Stale: no recent price from the feed" : "";
}
setInterval(() => {
  for (const row of root.querySelectorAll("tr[data-instrument]")) {
    const asOf = Date.parse(row.dataset.asOf);
    if (!row.classList.contains("stale") && !Number.isNaN(asOf) && Date.now() - asOf > staleAfterMs) {
      markStale(row, true, row.dataset.asOf);
    }
  }
}, 1000);

function onMessage(message) {
  if (message.type === "snapshot") {
    document.getElementById("placeholder")?.remove();
    const ids = new Set(message.portfolios.map((p) => p.id));
    for (const [id, entry] of shown) {
      if (!ids.has(id)) {
        entry.el.remove();
        shown.delete(id);
      }
    }
    const mine = message.portfolios.filter((p) => wanted === null || p.id === wanted);
    for (const p of mine) render(p);
    if (mine.length === 0) {
      root.innerHTML = '<p class="muted" id="placeholder">You have no portfolios yet.</p>';
    }
  } else if (message.type === "valuation") {
    if (wanted !== null && message.portfolio.id !== wanted) return;
    const entry = shown.get(message.portfolio.id);
    // Valuations can cross in flight (several workers): the one valued later holds everything
    // the earlier one does, so never replace a later picture with an earlier one.
    if (entry && entry.valuedAt && message.portfolio.valued_at < entry.valuedAt) return;
    render(message.portfolio);
  } else if (message.type === "error") {
    console.warn("server error", message.code, message.message);
  }
}

function onStatus(status) {
  showStatus(statusEl, status);
}

const connection = new LiveConnection({
  path: root.dataset.wsPath,
  onMessage,
  onStatus,
  heartbeatSeconds: Number(root.dataset.heartbeat || 10),
});
// Exposed for debugging in the console and for the browser tests (e.g. to inject a seq gap).
window.livefolioConnection = connection;
connection.connect();
