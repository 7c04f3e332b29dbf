// The portfolio switcher: choosing a portfolio opens the same page of that portfolio.
// (A script file, not inline handlers: the Content-Security-Policy allows only the app's own.)
const form = document.getElementById("portfolio-switch");
const select = document.getElementById("portfolio-switcher");
if (form && select) {
  form.addEventListener("submit", (event) => event.preventDefault());
  select.addEventListener("change", () => {
    if (select.value) location.href = select.value;
  });
}
