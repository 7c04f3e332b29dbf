// Number formatting for the browser's locale: one formatter per kind of number, the same rules as
// the server's template filters (portfolio/templatetags/livefolio.py). Amounts arrive as decimal
// strings; Intl formats a string exactly, so no money passes through float arithmetic here.
//   money     an amount in a currency, the currency's own decimals (2 for USD, EUR): "$1,234.50"
//   price     an instrument's price at the instrument's precision (priceDecimals): "97,117.56"
//   quantity  a quantity, trailing zeros trimmed: "0.5", "1,200"
//   percent   a percentage string from the server, signed when asked: "+1.23%"

const cache = new Map();
function formatter(key, options) {
  if (!cache.has(key)) cache.set(key, new Intl.NumberFormat(undefined, options));
  return cache.get(key);
}
const missing = (value) => value === null || value === undefined || value === "";

// A currency's formatter; Intl knows only three-letter codes, so a longer one the admin accepts
// (USDT) is written after the amount, with ``plain``'s decimals.
function currencyFormatter(key, currency, options, plain) {
  if (!cache.has(key)) {
    let made;
    try {
      made = new Intl.NumberFormat(undefined, { ...options, style: "currency", currency });
    } catch (error) {
      if (!(error instanceof RangeError)) throw error;
      const amounts = new Intl.NumberFormat(undefined, plain);
      made = { format: (amount) => `${amounts.format(amount)} ${currency}` };
    }
    cache.set(key, made);
  }
  return cache.get(key);
}

export function money(amount, currency) {
  if (missing(amount)) return "—";
  const cents = { minimumFractionDigits: 2, maximumFractionDigits: 2 };
  return currencyFormatter(`money:${currency}`, currency, {}, cents).format(amount);
}

// Decimals an instrument's price is shown with: its own when the admin sets them; else from its
// asset class and size: FX quotes to the
// pipette (5 decimals, 3 for rates of 10 or more such as USDJPY); other prices in cents, with
// more decimals only below 1 so that a small price keeps four significant digits.
export function priceDecimals(value, assetClass, fixed = null) {
  if (fixed !== null && fixed !== undefined) return fixed; // the instrument's own, from the admin
  const size = Math.abs(Number(value));
  if (!Number.isFinite(size)) return 2;
  if (assetClass === "fx") return size >= 10 ? 3 : 5;
  if (size >= 1 || size === 0) return 2;
  if (size >= 0.01) return 4;
  return 8;
}

export function price(value, decimals, currency = null) {
  if (missing(value)) return "—";
  const options = { minimumFractionDigits: decimals, maximumFractionDigits: decimals };
  if (!currency) return formatter(`price:${decimals}`, options).format(value);
  return currencyFormatter(`price:${decimals}:${currency}`, currency, options, options).format(value);
}

export function quantity(value) {
  if (missing(value)) return "—";
  return formatter("quantity", { maximumFractionDigits: 12 }).format(value);
}

// A sign on gains and losses only: zero is shown as it is.
export function sign(value) {
  return String(value).startsWith("-") || Number(value) === 0 ? "" : "+";
}

export function percent(pct, { signed = false } = {}) {
  if (missing(pct)) return "—";
  const text = formatter("percent", { minimumFractionDigits: 2, maximumFractionDigits: 2 }).format(pct);
  return `${signed ? sign(pct) : ""}${text}%`;
}

export function time(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "—";
}

// Set a cell's text quietly: only flash() draws the eye, and only for a price that moved.
export function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

// Briefly highlight a price that moved: green up, red down.
export function flash(el, direction) {
  if (!direction) return;
  el.classList.remove("flash-up", "flash-down");
  void el.offsetWidth; // restart the animation
  el.classList.add(direction > 0 ? "flash-up" : "flash-down");
}
