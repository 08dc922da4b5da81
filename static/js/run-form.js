// Shows either the parameter fields or the raw-JSON box, as the "Parameters as" choice says,
// the job options only for a job, and the data fields of the chosen mode.
// Without JavaScript both stay visible and the choice still decides which one the server reads.
// The listeners sit on the form, so they survive the fields being swapped in again (the script page's
// run panel swaps them when the server refuses a value, or when a new version changes the signature).
(function () {
  "use strict";
  var form = document.getElementById("run-form");
  if (!form) { return; }

  function checkedValue(name, fallback) {
    var checked = form.querySelector("input[name='" + name + "']:checked");
    return checked ? checked.value : fallback;
  }
  function sync() {
    var mode = checkedValue("params_mode", "fields");
    form.querySelectorAll(".params").forEach(function (box) {
      box.hidden = box.getAttribute("data-mode") !== mode;
    });
    var box = form.querySelector(".job-options");
    if (box) { box.hidden = checkedValue("execution", "") !== "async"; }
    var kind = checkedValue("kind", "do-eval");
    form.querySelectorAll(".kind-fields").forEach(function (fields) {
      fields.hidden = fields.getAttribute("data-kinds").split(" ").indexOf(kind) < 0;
    });
  }
  form.addEventListener("change", function (event) {
    if (event.target.name === "preset") { fillFromPreset(event.target); }
    sync();
  });
  document.body.addEventListener("htmx:afterSettle", sync);
  sync();

  // A preset fills the fields (or the raw JSON when it names a parameter the fields do not have).
  function fillFromPreset(select) {
    var option = select.options[select.selectedIndex];
    if (!option || !option.value) { return; }
    var parameters;
    try { parameters = JSON.parse(option.getAttribute("data-parameters")); } catch (e) { return; }
    var allKnown = Object.keys(parameters).every(function (key) {
      return form.querySelector("[name='p_" + key + "']") !== null;
    });
    var raw = form.querySelector("[name='raw_json']");
    if (raw) { raw.value = JSON.stringify(parameters, null, 2); }
    var modeRadio = form.querySelector("input[name='params_mode'][value='" + (allKnown ? "fields" : "json") + "']");
    if (modeRadio) { modeRadio.checked = true; }
    if (!allKnown) { return; }
    Object.keys(parameters).forEach(function (key) {
      var input = form.querySelector("[name='p_" + key + "']");
      var value = parameters[key];
      if (input.type === "checkbox") { input.checked = !!value; }
      else if (typeof value === "string" && input.getAttribute("data-kind") !== "json" && input.getAttribute("data-kind") !== "list") { input.value = value; }
      else { input.value = JSON.stringify(value); }
    });
  }

  form.addEventListener("submit", function (event) {
    var button = event.submitter && event.submitter.hasAttribute("data-busy-label")
      ? event.submitter : (event.submitter ? null : form.querySelector("button[data-busy-label]"));
    if (button) {
      var label = button.textContent;
      // Disabled after this tick, so that the click still submits; enabled again when htmx answers.
      setTimeout(function () { button.disabled = true; button.textContent = button.getAttribute("data-busy-label"); }, 0);
      form.addEventListener("htmx:afterRequest", function again() {
        button.disabled = false; button.textContent = label;
        form.removeEventListener("htmx:afterRequest", again);
      });
    }
  });
})();
