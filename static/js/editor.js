// Turns <textarea data-editor="python"> into a CodeMirror editor (the textarea still works without JS),
// and <pre data-viewer="python"> into a read-only one. A source error's line is marked in the editor.
(function () {
  "use strict";

  function nextFocusable(element) {
    var focusables = Array.prototype.slice.call(
      document.querySelectorAll("a[href], button, input, select, textarea, [contenteditable='true'], [tabindex]:not([tabindex='-1'])")
    ).filter(function (el) { return !el.disabled && el.offsetParent !== null; });
    var index = focusables.indexOf(element);
    return index >= 0 ? focusables[index + 1] : null;
  }

  function editor(textarea) {
    var cm = CodeMirror.fromTextArea(textarea, {
      mode: "python",
      lineNumbers: true,
      indentUnit: 4,
      tabSize: 4,
      indentWithTabs: false,
      matchBrackets: true,
      autoCloseBrackets: true,
      styleActiveLine: true,
      // Only the lines in view (and a margin) are drawn: with Infinity a 3,000-line script redrew every
      // line on each key (~90 ms); see bench/editor_bench.py.
      viewportMargin: 20,
      screenReaderLabel: "Source code",
      // The input is the code itself (contenteditable), inside the scrolling box: keyboard users reach the
      // box by reaching the editor, and screen readers read the lines.
      inputStyle: "contenteditable",
      extraKeys: {
        // Spaces, never tab characters: Python mixes them badly.
        Tab: function (cm) {
          if (cm.somethingSelected()) { cm.indentSelection("add"); }
          else { cm.replaceSelection(Array(cm.getOption("indentUnit") + 1).join(" "), "end", "+input"); }
        },
        "Shift-Tab": function (cm) { cm.indentSelection("subtract"); },
        // Save (a new version) without leaving the keyboard, as in any editor.
        "Ctrl-S": function (cm) { cm.save(); textarea.form && textarea.form.requestSubmit(); },
        "Cmd-S": function (cm) { cm.save(); textarea.form && textarea.form.requestSubmit(); },
        // Keyboard users need a way out of an editor that takes Tab.
        Esc: function (cm) {
          var next = nextFocusable(cm.getInputField());
          if (next) { next.focus(); }
        }
      }
    });
    var box = textarea.closest("[data-error-line]");
    var marked = null;
    function mark(line, moveCursor) {
      if (marked !== null) { cm.removeLineClass(marked, "background", "cm-error-line"); marked = null; }
      if (!isNaN(line) && line > 0 && line <= cm.lineCount()) {
        marked = cm.addLineClass(line - 1, "background", "cm-error-line");
        if (moveCursor) {
          cm.setCursor({ line: line - 1, ch: 0 });
          cm.scrollIntoView({ line: line - 1, ch: 0 }, 80);
        }
      }
    }
    mark(box ? parseInt(box.getAttribute("data-error-line"), 10) : NaN, true);
    if (box) {
      // While typing, htmx asks the server to check the source (see the form's hx-post on the box).
      // The textarea is filled when the check's request is made (htmx:confirm comes before htmx reads
      // the form), not on every key: copying a long source per key is work for nothing.
      // No debounce: a key is checked at once when no check is on its way, else once that one is back
      // (one request at a time, the last text always checked): the answer comes a round trip after the
      // key, and fast typing costs the server no more than one check per round trip.
      var checking = false, pending = false;
      function check() {
        checking = true; pending = false;
        window.htmx.trigger(box, "checksource");
      }
      cm.on("change", function () {
        if (!window.htmx) { return; }
        if (checking) { pending = true; } else { check(); }
      });
      box.addEventListener("htmx:afterRequest", function (event) {
        if (event.detail.elt !== box) { return; }
        checking = false;
        if (pending) { check(); }
      });
      box.addEventListener("htmx:confirm", function () { cm.save(); });
      document.body.addEventListener("htmx:afterSwap", function (event) {
        var result = event.detail.target.querySelector("[data-check-line]");
        if (result) { mark(parseInt(result.getAttribute("data-check-line"), 10), false); }
        // The last save's errors describe a source that no longer exists: the live check replaces them.
        if (result && event.detail.target.id === "source-check") {
          box.parentNode.querySelectorAll("#source-error").forEach(function (old) { old.remove(); });
          box.parentNode.classList.remove("has-error");
        }
      });
    }
    cm.getInputField().setAttribute("aria-describedby", "source-help" + (document.getElementById("source-error") ? " source-error" : ""));
    textarea.form && textarea.form.addEventListener("submit", function () { cm.save(); });
    window.omlwebEditor = cm;
  }

  function viewer(pre) {
    var host = document.createElement("div");
    host.className = "code-viewer";
    pre.parentNode.insertBefore(host, pre);
    CodeMirror(host, {
      value: pre.textContent,
      mode: "python",
      lineNumbers: true,
      readOnly: true,
      viewportMargin: Infinity,
      screenReaderLabel: pre.getAttribute("aria-label") || "Source code"
    });
    pre.hidden = true;
  }

  if (typeof CodeMirror === "undefined") { return; }
  document.querySelectorAll("textarea[data-editor='python']").forEach(editor);
  document.querySelectorAll("pre[data-viewer='python']").forEach(viewer);
})();
