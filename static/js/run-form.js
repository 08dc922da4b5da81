// Shows either the parameter fields or the raw-JSON box, as the "Parameters as" choice says,
// and the job options only for a job.
// Without JavaScript both stay visible and the choice still decides which one the server reads.
(function () {
  "use strict";
  var form = document.getElementById("run-form");
  if (!form) { return; }
  function sync() {
    var checked = form.querySelector("input[name='params_mode']:checked");
    var mode = checked ? checked.value : "fields";
    form.querySelectorAll(".params").forEach(function (box) {
      box.hidden = box.getAttribute("data-mode") !== mode;
    });
  }
  form.querySelectorAll("input[name='params_mode']").forEach(function (radio) {
    radio.addEventListener("change", sync);
  });
  sync();
  // The job options matter only for a job.
  function syncExecution() {
    var checked = form.querySelector("input[name='execution']:checked");
    var box = form.querySelector(".job-options");
    if (box) { box.hidden = !checked || checked.value !== "async"; }
  }
  form.querySelectorAll("input[name='execution']").forEach(function (radio) {
    radio.addEventListener("change", syncExecution);
  });
  syncExecution();
  // The data fields of the chosen mode only (do-eval, table-, row-, group-, index-apply).
  function syncKind() {
    var checked = form.querySelector("input[name='kind']:checked");
    var kind = checked ? checked.value : "do-eval";
    form.querySelectorAll(".kind-fields").forEach(function (box) {
      box.hidden = box.getAttribute("data-kinds").split(" ").indexOf(kind) < 0;
    });
  }
  form.querySelectorAll("input[name='kind']").forEach(function (radio) {
    radio.addEventListener("change", syncKind);
  });
  syncKind();
  form.addEventListener("submit", function () {
    var button = form.querySelector("button[data-busy-label]");
    if (button) {
      // Disabled after this tick, so that the click still submits.
      setTimeout(function () { button.disabled = true; button.textContent = button.getAttribute("data-busy-label"); }, 0);
    }
  });
})();
