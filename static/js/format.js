// Number formatting for the browser's locale. Amounts arrive as decimal strings; Intl formats a
// string exactly, so no money passes through float arithmetic here.

const moneyFormats = new Map();

function moneyFormat(currency) {
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency });
  } catch (error) {
    // Intl knows only three-letter codes; a longer one the admin accepts (USDT) is written
    // after the amount.
    if (!(error instanceof RangeError)) throw error;
    const amounts = new Intl.NumberFormat(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    return { format: (amount) => `${amounts.format(amount)} ${currency}` };
  }
}

export function money(amount, currency) {
  if (amount === null || amount === undefined) return "—";
  if (!moneyFormats.has(currency)) moneyFormats.set(currency, moneyFormat(currency));
  return moneyFormats.get(currency).format(amount);
}

const plain = new Intl.NumberFormat(undefined, { maximumFractionDigits: 12 });
export function number(value) {
  return value === null || value === undefined ? "—" : plain.format(value);
}

const price = new Intl.NumberFormat(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 10 });
export function priceText(value) {
  return value === null || value === undefined ? "—" : price.format(value);
}

export function time(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "—";
}

export function signed(value, suffix = "") {
  if (value === null || value === undefined) return "";
  const text = plain.format(value);
  return (value.startsWith("-") ? text : `+${text}`) + suffix;
}

// Briefly highlight an element whose text changed (green up, red down when a direction is given).
export function setText(el, text, direction = 0) {
  if (el.textContent === text) return;
  el.textContent = text;
  el.classList.remove("flash", "flash-up", "flash-down");
  void el.offsetWidth; // restart the animation
  el.classList.add(direction > 0 ? "flash-up" : direction < 0 ? "flash-down" : "flash");
}
