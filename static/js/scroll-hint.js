// A table wider than its scrolling box says so: "Scroll sideways for more →" above it, and the box
// gets .is-overflowing (its shadows come from CSS). Checked on load, resize and after htmx swaps.
(function () {
  "use strict";
  function check() {
    document.querySelectorAll(".table-wrap").forEach(function (wrap) {
      var hint = wrap.previousElementSibling;
      if (!hint || !hint.classList.contains("scroll-hint")) {
        hint = document.createElement("p");
        hint.className = "scroll-hint";
        hint.setAttribute("aria-hidden", "true");
        hint.textContent = "Scroll sideways for more →";
        wrap.parentNode.insertBefore(hint, wrap);
      }
      var overflowing = wrap.scrollWidth > wrap.clientWidth + 1;
      wrap.classList.toggle("is-overflowing", overflowing);
      hint.classList.toggle("shown", overflowing);
    });
  }
  var pending = false;
  function later() {
    if (pending) { return; }
    pending = true;
    window.requestAnimationFrame(function () { pending = false; check(); });
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", check); } else { check(); }
  window.addEventListener("resize", later);
  document.addEventListener("htmx:afterSettle", later);
})();
