// The live portfolio page: draws the snapshot, applies valuations, shows connection state.
import { money, number, setText, time } from "./format.js";
import { LiveConnection } from "./live.js";

const root = document.getElementById("portfolios");
const template = document.getElementById("portfolio-template");
const statusEl = document.getElementById("status");
// The page shows one portfolio (the switcher picks it); the snapshot carries all of the user's.
const wanted = root.dataset.portfolioId ? Number(root.dataset.portfolioId) : null;
const shown = new Map(); // portfolio id -> { el, valuedAt }

function signed(amount, currency, pct) {
  if (amount === null || amount === undefined) return "—";
  // A sign on gains and losses only: zero is shown as it is.
  const sign = (s) => (s.startsWith("-") || Number(s) === 0 ? "" : "+");
  const text = sign(amount) + money(amount, currency);
  return pct === null || pct === undefined ? text : `${text} (${sign(pct)}${pct}%)`;
}
function tone(el, amount) {
  el.classList.toggle("up", !!amount && !amount.startsWith("-") && Number(amount) !== 0);
  el.classList.toggle("down", !!amount && amount.startsWith("-"));
}
function percent(pct) {
  return pct === null || pct === undefined ? "—" : `${pct}%`;
}
function fillList(ul, slices, currency) {
  ul.replaceChildren(
    ...slices.map((s) => {
      const li = document.createElement("li");
      li.dataset.key = s.key;
      li.textContent = `${s.key}: ${money(s.value, currency)} (${percent(s.weight_pct)})`;
      return li;
    }),
  );
}


function render(portfolio) {
  let entry = shown.get(portfolio.id);
  if (!entry) {
    const el = template.content.firstElementChild.cloneNode(true);
    el.dataset.portfolio = portfolio.id;
    root.appendChild(el);
    entry = { el, valuedAt: null };
    shown.set(portfolio.id, entry);
  }
  const { el } = entry;
  entry.valuedAt = portfolio.valued_at;
  const base = portfolio.base_currency;
  el.querySelector('[data-field="name"]').textContent = portfolio.name;
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
        '<th scope="row"><span class="symbol"></span> <span class="name muted"></span></th>' +
        '<td class="num qty"></td><td class="num price"></td><td class="num value"></td>' +
        '<td class="num day"></td><td class="num upnl"></td><td class="num rpnl"></td>' +
        '<td class="num weight"></td><td class="num asof muted"></td>';
      body.appendChild(row);
    }
    row.querySelector(".symbol").textContent = h.symbol;
    row.querySelector(".name").textContent = h.name;
    row.querySelector(".qty").textContent = number(h.quantity);
    setText(row.querySelector(".price"), money(h.price, h.currency));
    setText(row.querySelector(".value"), money(h.value, h.currency));
    const day = row.querySelector(".day");
    setText(day, signed(h.day_change, base, h.day_change_pct));
    tone(day, h.day_change);
    const upnl = row.querySelector(".upnl");
    setText(upnl, signed(h.unrealized_pnl, base, h.unrealized_pnl_pct));
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
      tr.innerHTML = '<th scope="row">Cash <span class="muted"></span></th><td></td><td></td>' +
        '<td class="num value"></td><td></td><td></td><td></td><td class="num weight"></td><td></td>';
      tr.querySelector("span").textContent = c.currency;
      tr.querySelector(".value").textContent = money(c.amount, c.currency);
      tr.querySelector(".weight").textContent = percent(c.weight_pct);
      return tr;
    }),
  );
  fillList(el.querySelector('[data-field="by_asset_class"]'), (portfolio.allocation || {}).asset_class || [], base);
  fillList(el.querySelector('[data-field="by_currency"]'), (portfolio.allocation || {}).currency || [], base);
  el.querySelector('[data-field="issues"]').textContent = (portfolio.issues || []).length
    ? `Left out of the totals: ${portfolio.issues.join("; ")}`
    : "";
}

// A price is stale when the server says so, or once it is older than the server's limit while
// no update arrives (the feed is down and nothing is sent): checked every second.
const staleAfterMs = Number(root.dataset.staleAfter || 120) * 1000;
function markStale(row, stale, asOf) {
  const cell = row.querySelector(".asof");
  cell.textContent = time(asOf) + (stale ? " (stale)" : "");
  cell.classList.toggle("stale", stale);
  row.classList.toggle("stale", stale);
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

function onStatus({ state, retryAt }) {
  statusEl.className = `status status-${state}`;
  statusEl.dataset.state = state;
  if (state === "live") statusEl.textContent = "Live";
  else if (state === "offline") statusEl.textContent = "Offline";
  else if (state === "connecting") statusEl.textContent = "Connecting…";
  else if (retryAt) {
    const seconds = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
    statusEl.textContent = `Reconnecting in ${seconds}s…`;
  } else statusEl.textContent = "Reconnecting…";
}

const connection = new LiveConnection({ path: root.dataset.wsPath, onMessage, onStatus });
// Exposed for debugging in the console and for the browser tests (e.g. to inject a seq gap).
window.livefolioConnection = connection;
connection.connect();
