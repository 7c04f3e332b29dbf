// The live portfolio page: draws the snapshot, applies valuations, shows connection state.
import { LiveConnection } from "./live.js";

const root = document.getElementById("portfolios");
const template = document.getElementById("portfolio-template");
const statusEl = document.getElementById("status");
const shown = new Map(); // portfolio id -> { el, asOf }

const moneyFormats = new Map();
function money(amount, currency) {
  if (amount === null || amount === undefined) return "—";
  if (!moneyFormats.has(currency)) {
    moneyFormats.set(currency, new Intl.NumberFormat(undefined, { style: "currency", currency }));
  }
  // Intl formats a decimal string exactly; no float arithmetic on money in the browser.
  return moneyFormats.get(currency).format(amount);
}
const plain = new Intl.NumberFormat(undefined, { maximumFractionDigits: 12 });
function number(value) {
  return value === null || value === undefined ? "—" : plain.format(value);
}
function time(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "—";
}

function setText(el, text) {
  if (el.textContent !== text) {
    el.textContent = text;
    el.classList.remove("flash");
    void el.offsetWidth; // restart the flash animation
    el.classList.add("flash");
  }
}

function render(portfolio) {
  let entry = shown.get(portfolio.id);
  if (!entry) {
    const el = template.content.firstElementChild.cloneNode(true);
    el.dataset.portfolio = portfolio.id;
    root.appendChild(el);
    entry = { el, asOf: null };
    shown.set(portfolio.id, entry);
  }
  const { el } = entry;
  entry.asOf = portfolio.as_of;
  el.querySelector('[data-field="name"]').textContent = portfolio.name;
  setText(el.querySelector('[data-field="total"]'), money(portfolio.total, portfolio.base_currency));
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
        '<td class="num qty"></td><td class="num price"></td><td class="num value"></td><td class="num asof muted"></td>';
      body.appendChild(row);
    }
    row.querySelector(".symbol").textContent = h.symbol;
    row.querySelector(".name").textContent = h.name;
    row.querySelector(".qty").textContent = number(h.quantity);
    setText(row.querySelector(".price"), money(h.price, h.currency));
    setText(row.querySelector(".value"), money(h.value, h.currency));
    row.querySelector(".asof").textContent = time(h.price_as_of);
    row.dataset.asOf = h.price_as_of || "";
    markStale(row, h.stale);
  }
  for (const row of body.querySelectorAll("tr[data-instrument]")) {
    if (!seen.has(row.dataset.instrument)) row.remove();
  }
}

// A price is stale when the server says so, or once it is older than the server's limit
// while no update arrives (the feed is down): checked every second.
const staleAfterMs = Number(root.dataset.staleAfter || 120) * 1000;
function markStale(row, stale) {
  row.classList.toggle("stale", stale);
  row.querySelector(".asof").title = stale ? "Stale: no recent price from the feed" : "";
}
setInterval(() => {
  for (const row of root.querySelectorAll("tr[data-instrument]")) {
    const asOf = Date.parse(row.dataset.asOf);
    if (!Number.isNaN(asOf) && Date.now() - asOf > staleAfterMs) markStale(row, true);
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
    for (const p of message.portfolios) render(p);
    if (message.portfolios.length === 0) {
      root.innerHTML = '<p class="muted" id="placeholder">You have no portfolios yet.</p>';
    }
  } else if (message.type === "valuation") {
    const entry = shown.get(message.portfolio.id);
    // Valuations can cross in flight; never replace a newer picture with an older one.
    if (entry && entry.asOf && message.portfolio.as_of && message.portfolio.as_of < entry.asOf) return;
    render(message.portfolio);
  } else if (message.type === "error") {
    console.warn("server error", message.code, message.message);
  }
}

function onStatus({ state, retryAt }) {
  statusEl.className = `status status-${state}`;
  statusEl.dataset.state = state;
  if (state === "live") statusEl.textContent = "Live";
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
