// The script page's keys: Ctrl/Cmd+S saves the editor as a new version (with the message, if any),
// Ctrl/Cmd+Enter runs (saving first when the editor has unsaved changes), both through htmx so the
// page stays. Without scripts the editor and run forms post as plain forms.
// htmx loads deferred: this starts once the document (and so htmx) is ready.
document.addEventListener("DOMContentLoaded", function () {
  "use strict";
  var editorForm = document.getElementById("editor-form");
  var runForm = document.getElementById("run-form");
  if (!window.htmx || (!editorForm && !runForm)) { return; }
  var saved = null;  // the editor's change generation at the last save (or load)

  function editor() { return window.omlwebEditor || null; }
  function dirty() {
    var cm = editor();
    if (!cm || !editorForm) { return false; }
    if (saved === null) { saved = cm.changeGeneration(); }
    return !cm.isClean(saved);
  }

  function save() {
    var cm = editor();
    if (!editorForm) { return Promise.resolve(true); }
    var generation = cm ? cm.changeGeneration() : null;
    if (cm) { cm.save(); }
    return window.htmx.ajax("POST", editorForm.getAttribute("action"), {
      source: editorForm, target: "#save-status", swap: "innerHTML"
    }).then(function () {
      var failed = document.querySelector("#save-status [data-save-error]");
      if (!failed) {
        saved = generation;
        var message = editorForm.querySelector("[name='message']");
        if (message) { message.value = ""; }
      }
      return !failed;
    });
  }

  function run() {
    if (!runForm) { return; }
    (dirty() ? save() : Promise.resolve(true)).then(function (ok) {
      if (ok) { runForm.requestSubmit(runForm.querySelector("button[data-busy-label]")); }
    });
  }

  window.omlwebSave = function () { save(); };
  if (editorForm) {
    editorForm.addEventListener("submit", function (event) { event.preventDefault(); save(); });
  }
  document.addEventListener("keydown", function (event) {
    if (!(event.ctrlKey || event.metaKey) || event.altKey) { return; }
    if (event.key === "Enter") {
      event.preventDefault();
      event.stopPropagation();
      run();
    } else if ((event.key === "s" || event.key === "S") && editorForm) {
      // Caught before the editor's own Ctrl-S (which submits the form on the edit page).
      event.preventDefault();
      event.stopPropagation();
      save();
    }
  }, true);
  if (editor()) { saved = editor().changeGeneration(); }
});
