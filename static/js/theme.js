// Light/dark theme: follows the system until the user picks one; the pick is remembered.
// Loaded as a classic script in <head> so the page never flashes in the wrong theme.
(function () {
  const KEY = "livefolio-theme";
  const root = document.documentElement;
  const saved = localStorage.getItem(KEY);
  if (saved === "light" || saved === "dark") root.dataset.theme = saved;

  function current() {
    if (root.dataset.theme) return root.dataset.theme;
    return matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  }

  document.addEventListener("DOMContentLoaded", function () {
    const button = document.getElementById("theme-toggle");
    if (!button) return;
    const label = () => (button.title = `Theme: ${current()} (click to switch)`);
    label();
    button.addEventListener("click", function () {
      const next = current() === "dark" ? "light" : "dark";
      root.dataset.theme = next;
      localStorage.setItem(KEY, next);
      label();
      document.dispatchEvent(new CustomEvent("livefolio:theme", { detail: next }));
    });
  });
})();
